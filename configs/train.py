"""Train a sparse dictionary on an activation store: a TopK SAE (Gao et al. 2024) by default, any architecture,
sweep or transcoder by overrides.

    jaxinterp train --config configs/train.py \
        --config.store=stores/smollm2_pydoc --config.hook=blocks.12.hook_resid_post \
        --config.out=runs/topk --config.sae.n_latents=4096 --config.sae.k=32 --config.steps=2000

Other architectures and sweeps (several SAEs from the same batches) are overrides::

    jaxinterp train --config configs/train.py --config.sae.architecture=jumprelu --config.normalize=true
    jaxinterp train --config configs/train.py --config.sweep="k16: k=16; k64: k=64; bt: architecture=batch_topk"

A transcoder (Dunefsky et al. 2024) reads one hook and reconstructs another; ``sae.skip`` adds a
linear skip connection (Paulo et al. 2025)::

    jaxinterp train --config configs/train.py --config.hook=blocks.5.mlp.hook_in \
        --config.target_hook=blocks.5.hook_mlp_out --config.sae.skip=true --config.out=runs/tc5

Variant ``:quick`` trains 100 steps of a 1024-latent SAE, for a smoke test.
"""

import ml_collections

from jaxinterp.schemas import distributed_config, sae_config, wandb_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.distributed = distributed_config()  # processes: from the environment (launch/local.py, TPU pod, SLURM)
    config.store = "stores/smollm2_pydoc"
    config.hook = "blocks.12.hook_resid_post"
    config.target_hook = ""  # '' = hook (an SAE); e.g. blocks.12.hook_mlp_out with hook=blocks.12.mlp.hook_in: a transcoder
    config.out = "runs/topk"
    config.seed = 0
    config.init_from = ""  # continue from a run dir or an SAELens/sparsify/npz export
    config.allow_other_model = False  # refuse an init_from SAE trained on another model's activations
    config.steps = 2000
    config.batch_size = 1024
    config.lr = 0.0
    config.warmup_steps = 0  # measured better than 50 or 200 on pydoc and stdlib code (bench/RESULTS.md, issue 21)
    config.decay_fraction = 0.2
    config.grad_clip = 1.0
    config.holdout_fraction = 0.05
    config.mixing_chunks = 16
    config.streams = -1  # one per process; fix it (e.g. 8) to get the same batches on any process count
    config.exclude_bos = True
    config.normalize = False
    config.norm_tokens = 65536
    config.on_nonfinite = "error"
    config.dead_tokens = 10_000_000
    config.log_every = 50
    config.checkpoint_every = 500
    config.eval_tokens = 8192
    config.massive_ratio = 10.0  # *_nonmassive metrics: norm > 10x median = massive (Sun et al. 2024)
    # Massive-activation training tokens shrunk to 10x the median norm (evaluation sees them as they are): on
    # SmolLM2 pydoc and stdlib code, layers 12/20, the best FVU over all tokens and as good a non-massive FVU and
    # CE-loss recovered as leaving them out ("drop"); keeping them hurt both (bench/RESULTS.md, issue 21).
    config.massive_tokens = "shrink"
    config.sae = sae_config("topk", n_latents=4096, k=32)
    config.compute_dtype = "float32"  # bfloat16: bf16 matmuls, fp32 master weights and optimizer
    config.sweep = ""  # e.g. "k16: k=16; k64: k=64" trains three SAEs from one read of the data
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.model = 1
    config.wandb = wandb_config()  # --config.wandb.project=NAME logs to Weights & Biases (the wandb extra)
    if variant == "quick":
        config.steps = 100
        config.sae.n_latents = 1024
        config.out = "runs/topk_quick"
    return config
