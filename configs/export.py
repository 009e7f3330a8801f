"""Export a trained run for other tools.

    jaxinterp export --config configs/export.py --config.run=runs/topk \
        --config.format=saelens --config.out=exports/topk_saelens

Formats (``--config.format``):
  saelens   SAELens v6 directory (``sae_lens.SAE.load_from_disk(out)``); every architecture
            (BatchTopK and Matryoshka as jumprelu, ReLU as standard).
  sparsify  EleutherAI sparsify / delphi: ``<out>/<hookpoint>/`` with the hookpoint an HF module
            path (``layers.6``); ``sparsify.SparseCoder.load_from_disk(out/hookpoint)``. TopK only.
  npz       Gemma-Scope-style ``<out>/params.npz`` (+ ``cfg.json``); JumpReLU, BatchTopK,
            Matryoshka, and ReLU (threshold 0). Not TopK.
  dictionary_learning  ``<out>/ae.pt`` + ``config.json`` as dictionary-learning 0.1.0 and SAEBench load
            them; the architectures it has.
  circuit_tracer  circuit-tracer 0.5.0 transcoder set: ``<out>/config.yaml`` + ``layer_<i>.safetensors``,
            one ReLU/JumpReLU/BatchTopK/Matryoshka transcoder blocks.i.mlp.hook_in -> blocks.i.hook_mlp_out
            per layer of the model; ``--config.run`` lists the runs (comma-separated) or names one sweep
            run (``--config.sae`` picks members, default all). Not TopK.

A sweep run needs ``--config.sae=<name>``. Load any of them back with
``jaxinterp.export.load_sae(path)``.
"""

import ml_collections

from jaxinterp.schemas import EXPORT


def get_config() -> ml_collections.ConfigDict:
    config = EXPORT.defaults()  # every field's default and doc: jaxinterp/schemas.py
    return config
