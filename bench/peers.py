"""CPU training-step timings of peer PyTorch SAE libraries, to compare with our JAX trainer.

Each function takes the same float32 batch ``x`` ([batch, d_in]) and returns mean seconds per
training step (on CUDA when torch sees a GPU, else on CPU with torch's default thread count;
float32 weights) after a few warm-up steps, or ``None``
when the peer package cannot be imported (the caller prints "not installed"). The peers are an
optional extra: ``pip install eai-sparsify==1.3.3 "sae-lens>=6,<7"``. Each step mirrors what that
library's own trainer does in one optimizer step, with its default settings:

  sparsify (EleutherAI, ``sparsify.Trainer``, loss_fn="fvu"): decoder renormalised to unit norm
      (the trainer does this before every forward), forward with the batch's total variance,
      loss = fvu + auxk_alpha * auxk_loss + multi_topk_fvu / 8, backward, the decoder-gradient
      projection, optimizer step + zero_grad (+ LR scheduler for Adam), dead-latent bookkeeping.
      The default optimizer is "signum" (``ScheduleFreeWrapper(SignSGD, momentum=0.95)``, lr
      5e-3 / sqrt(n_latents / 2**14)); ``optimizer="adam"`` times its Adam option instead.
  SAELens v6 (``SAETrainer.step`` on a ``TopKTrainingSAE``, run as is): ``training_forward_pass``
      (MSE + TopK AuxK loss, decoder norms folded into the activations since
      rescale_acts_by_decoder_norm=True), firing statistics, backward, clip_grad_norm_(1.0),
      Adam(lr=3e-4, betas=(0.9, 0.999)), zero_grad, constant LR scheduler. No decoder projection
      or renormalisation: SAELens has none for TopK.

On CUDA each library runs with what its trainer does there by default: sparsify wraps its forward
in bf16 autocast whenever the GPU supports bf16 and its Trainer sets
``torch.set_float32_matmul_precision("high")`` (TF32), which we set too for its rows only;
SAELens trains in float32 without autocast unless asked. On CPU both are plain float32; with
``cpu_bf16`` sparsify's forward runs in CPU bf16 autocast (the like-for-like row for jaxinterp's
bf16 compute).

In both, AuxK's extra decode only runs when some latent is dead, which a short benchmark from a
fresh init never reaches (sparsify's default auxk_alpha is 0 besides), so it costs nothing here.
"""

from __future__ import annotations

import contextlib
import gc
import io
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

WARMUP_STEPS = 2


def _time_steps(step: Callable[[], Any], steps: int, warmup: int = WARMUP_STEPS) -> float:
    """Median wall seconds of ``step()`` over ``steps`` calls after ``warmup`` untimed ones.

    Each call is synchronised (CUDA kernels run asynchronously), as jax rows block on each step;
    the median, because one slow call on a shared machine moves a mean of 5 by up to 40%.
    The step functions return their loss (detached), which this ignores; tests can patch it in.
    """
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    seconds = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        sync()
        seconds.append(time.perf_counter() - began)
    return float(np.median(seconds))


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _release() -> None:
    """Collect the models and optimizer state a timing left behind (and CUDA's cached blocks)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sparsify_step_seconds(
    x: np.ndarray, n_latents: int, k: int, steps: int = 5, optimizer: Literal["signum", "adam"] = "signum",
    cpu_bf16: bool = False,
) -> float | None:
    """Seconds per training step of EleutherAI sparsify's TopK ``SparseCoder``, or None if absent.

    ``cpu_bf16`` runs its forward in CPU bf16 autocast: what sparsify does on CUDA (its forward is
    decorated with CUDA bf16 autocast), applied on CPU to compare with jaxinterp's bf16 compute.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Triton not installed, ..."
            import torch
            from schedulefree import ScheduleFreeWrapper
            from sparsify import SparseCoder, SparseCoderConfig, TrainConfig
            from sparsify.sign_sgd import SignSGD
            from transformers import get_linear_schedule_with_warmup
    except ImportError:
        return None
    # Without triton (always, on CPU) sparsify decodes with torch's embedding_bag. Trainer.fit's
    # torch.set_float32_matmul_precision("high") is process-global and only matters on CUDA
    # (TF32 tensor cores): we set it there for these rows and restore it after; CPU stays fp32.
    device = _device()
    train_cfg = TrainConfig(sae=SparseCoderConfig(num_latents=n_latents, k=k), optimizer=optimizer)
    torch.manual_seed(0)  # the trainer seeds with init_seeds[0] = 0 before building each coder
    batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    sae = SparseCoder(batch.shape[1], train_cfg.sae, device, dtype=torch.float32)
    precision = torch.get_float32_matmul_precision()
    if device == "cuda":
        torch.set_float32_matmul_precision("high")
    sae.b_dec.data = batch.mean(0)  # the trainer's first-step bias init
    schedulers: list[Any] = []
    if optimizer == "signum":  # the default: schedule-free sign-SGD
        opt: Any = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": 5e-3 / (n_latents / 2**14) ** 0.5}]),
                                       momentum=0.95)
        opt.train()
    else:  # torch.optim.Adam (bitsandbytes' Adam8bit when installed; not here), linear warm-up
        opt = torch.optim.Adam([{"params": sae.parameters(), "lr": 2e-4 / (n_latents / 2**14) ** 0.5}])
        schedulers.append(get_linear_schedule_with_warmup(opt, train_cfg.lr_warmup_steps, 10**6))
    tokens_since_fired = torch.zeros(n_latents, dtype=torch.long, device=device)
    did_fire = torch.zeros(n_latents, dtype=torch.bool, device=device)

    def step() -> torch.Tensor:
        # In the trainer's forward hook, per step: renormalise W_dec, forward, loss, backward.
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = tokens_since_fired > train_cfg.dead_feature_threshold if train_cfg.auxk_alpha > 0 else None
        total_variance = (batch - batch.mean(0)).pow(2).sum()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16 and device == "cpu"):
            out = sae(x=batch, y=batch, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        float(out.fvu.detach())  # the trainer accumulates it for logging every step
        loss = out.fvu + train_cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()  # .div(acc_steps) with acc_steps = 1
        # Then the optimizer step proper.
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        for scheduler in schedulers:
            scheduler.step()
        with torch.no_grad():
            tokens_since_fired.add_(batch.shape[0])
            tokens_since_fired[did_fire] = 0
            did_fire.zero_()
        return loss.detach()

    try:
        return _time_steps(step, steps)
    finally:
        torch.set_float32_matmul_precision(precision)
        del sae, opt, schedulers, step
        _release()


def sparsify_transcoder_step_seconds(x: np.ndarray, y: np.ndarray, n_latents: int, k: int,
                                     steps: int = 5) -> float | None:
    """Seconds per training step of sparsify's TopK transcoder (``transcode=True``, input ``x``, target
    ``y``, same width) with its Adam option, as ``sparsify.Trainer`` runs it; or None if absent.

    What the trainer does differently for a transcoder: ``W_dec`` starts at zero, the first step sets
    ``b_enc = −x̄ W_encᵀ`` and ``b_dec = ȳ``, and there is neither decoder renormalisation nor the
    decoder-gradient projection (both are skipped when ``transcode``). Loss = fvu + auxk_alpha ·
    auxk + multi_topk_fvu / 8 (auxk_alpha 0 and multi_topk off by default: fvu alone), backward,
    Adam step + zero_grad + its linear warm-up scheduler, dead-latent bookkeeping.
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Triton not installed, ..."
            import torch
            from sparsify import SparseCoder, SparseCoderConfig, TrainConfig
            from transformers import get_linear_schedule_with_warmup
    except ImportError:
        return None
    device = _device()
    train_cfg = TrainConfig(sae=SparseCoderConfig(num_latents=n_latents, k=k, transcode=True), optimizer="adam")
    torch.manual_seed(0)
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    outputs = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(device)
    sae = SparseCoder(inputs.shape[1], train_cfg.sae, device, dtype=torch.float32)
    precision = torch.get_float32_matmul_precision()
    if device == "cuda":
        torch.set_float32_matmul_precision("high")
    # The trainer's first-step init for a transcoder.
    sae.encoder.bias.data = -inputs.mean(0) @ sae.encoder.weight.data.T
    sae.b_dec.data = outputs.mean(0)
    opt = torch.optim.Adam([{"params": sae.parameters(), "lr": 2e-4 / (n_latents / 2**14) ** 0.5}])
    scheduler = get_linear_schedule_with_warmup(opt, train_cfg.lr_warmup_steps, 10**6)
    tokens_since_fired = torch.zeros(n_latents, dtype=torch.long, device=device)
    did_fire = torch.zeros(n_latents, dtype=torch.bool, device=device)

    def step() -> torch.Tensor:
        dead_mask = tokens_since_fired > train_cfg.dead_feature_threshold if train_cfg.auxk_alpha > 0 else None
        total_variance = (outputs - outputs.mean(0)).pow(2).sum()
        out = sae(x=inputs, y=outputs, dead_mask=dead_mask, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        float(out.fvu.detach())
        loss = out.fvu + train_cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        opt.step()  # transcode: no remove_gradient_parallel_to_decoder_directions
        opt.zero_grad()
        scheduler.step()
        with torch.no_grad():
            tokens_since_fired.add_(inputs.shape[0])
            tokens_since_fired[did_fire] = 0
            did_fire.zero_()
        return loss.detach()

    try:
        return _time_steps(step, steps)
    finally:
        torch.set_float32_matmul_precision(precision)
        del sae, opt, scheduler, step
        _release()


def saelens_step_seconds(x: np.ndarray, n_latents: int, k: int, steps: int = 5) -> float | None:
    """Seconds per ``SAETrainer.step`` of SAELens v6's ``TopKTrainingSAE``, or None if absent."""
    try:
        import torch
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer
    except ImportError:
        return None
    device = _device()
    batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    torch.manual_seed(0)
    # Defaults otherwise: use_sparse_activations=False, aux_loss_coefficient=1.0,
    # rescale_acts_by_decoder_norm=True, decoder_init_norm=0.1, normalize_activations="none".
    sae_cfg = TopKTrainingSAEConfig(d_in=batch.shape[1], d_sae=n_latents, k=k, dtype="float32", device=device)
    sae = TopKTrainingSAE(sae_cfg)
    # The trainer builds the Adam optimizer, LR scheduler and firing statistics itself; its
    # defaults: lr 3e-4, betas (0.9, 0.999), constant schedule, no autocast, no wandb logging.
    total = batch.shape[0] * (WARMUP_STEPS + steps)
    # lr_end (unused by the constant schedule) is filled in as the runner config does: lr / 10.
    trainer_cfg = SAETrainerConfig(total_training_samples=total, train_batch_size_samples=batch.shape[0], lr_end=3e-5)
    trainer = SAETrainer(trainer_cfg, sae=sae, data_provider=iter(()))

    def step() -> torch.Tensor:
        # SAETrainer.fit's loop body, less logging and checkpointing (both off by default).
        trainer.maybe_reset_sparsity()
        loss = trainer.step(batch).loss.detach()
        trainer.n_training_steps += 1
        return loss

    try:
        return _time_steps(step, steps)
    finally:
        del sae, trainer, step
        _release()


def torch_floor_seconds(x: np.ndarray, n_latents: int, k: int, steps: int = 5) -> float | None:
    """Seconds of a bare torch ``topk(x @ W_enc, k)`` forward (no grad): a floor for context."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(_device())
    w_enc = torch.randn(batch.shape[1], n_latents, device=batch.device) / batch.shape[1] ** 0.5

    def step() -> None:
        with torch.no_grad():
            torch.topk(batch @ w_enc, k, dim=-1, sorted=False)

    try:
        return _time_steps(step, steps)
    finally:
        del w_enc, step
        _release()
