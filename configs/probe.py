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

from jaxinterp.schemas import PROBE


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = PROBE.defaults()  # every field's default and doc: jaxinterp/schemas.py
    if variant == "quick":
        config.n_examples = 400
        config.hooks = "blocks.0.hook_resid_post,blocks.6.hook_resid_post,blocks.12.hook_resid_post,blocks.24.hook_resid_post"
        config.out = "runs/probe_quick"
    return config
