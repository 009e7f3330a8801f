"""Probe sweep: every hook × C (× k) in one jitted program, on a real task that needs no download.

    jaxinterp probe --config configs/probe.py --config.out=runs/probe_open_bracket

The default task, ``builtin:open_bracket``, cuts lines of CPython's own stdlib sources after a
random token and labels each cut by whether a bracket is still open there, as Python's tokenizer
says; the probe reads the last token at every layer. ``builtin:statement_kind`` is an 8-class task
(the AST node type of a one-line statement). Your own data is a .csv/.jsonl file::

    jaxinterp probe --config configs/probe.py --config.data=reviews.jsonl --config.label_field=sentiment \
        --config.pooling=mean --config.families=logistic,ksparse,mlp --config.hooks=all

SAE latents (k-sparse probes, SAEBench style)::

    jaxinterp probe --config configs/probe.py --config.features=sae --config.sae_run=runs/topk \
        --config.families=ksparse --config.pooling=mean

Variant ``:quick`` probes 4 layers on 400 examples, for a smoke test.
"""

import ml_collections

from jaxinterp.schemas import distributed_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.distributed = distributed_config()  # processes: from the environment (launch/local.py, TPU pod, SLURM)
    config.model = "smollm2"
    config.backend = "auto"
    config.model_dtype = "float32"
    config.data = "builtin:open_bracket"
    config.n_examples = 2000
    config.text_field = "text"
    config.label_field = "label"
    config.token_label_field = ""
    config.target = "auto"
    config.missing_labels = "error"  # or "drop": drop texts with a missing label, counted in results.json
    config.hooks = "all"
    config.pooling = "last"
    config.prepend_bos = True
    config.max_length = 256
    config.batch_tokens = 8192
    config.features = "activations"
    config.sae_run = ""
    config.sae_name = ""
    config.allow_other_model = False  # refuse an SAE run trained on another model's activations
    config.families = "logistic"
    config.penalty = "l2"
    config.l1_ratio = 0.5
    config.C = "1e-4,1e-3,1e-2,0.03,0.1,0.3,1,10,100,1000"
    config.k = "1,2,5,10,20,50,100"
    config.standardize = True
    config.max_iter = 1000
    config.tol = 1e-4  # sklearn LogisticRegression's default: max |gradient| of the mean objective
    config.select_by = "auto"
    config.seed = 0
    config.validation_fraction = 0.2
    config.test_fraction = 0.2
    config.regime = ml_collections.ConfigDict()
    config.regime.subsample = 0
    config.regime.positive_fraction = 0.0
    config.regime.label_noise = 0.0
    config.mlp = ml_collections.ConfigDict()
    config.mlp.hidden = 256
    config.mlp.steps = 300
    config.mlp.learning_rate = 1e-3
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = 1
    config.out = "runs/probe_open_bracket"
    config.overwrite = False
    if variant == "quick":
        config.n_examples = 400
        config.hooks = "blocks.0.hook_resid_post,blocks.6.hook_resid_post,blocks.12.hook_resid_post,blocks.24.hook_resid_post"
        config.out = "runs/probe_quick"
    return config
