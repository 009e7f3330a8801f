"""AuxK cost vs the number of dead latents: jaxinterp's AuxK vs a per-token top-k always k_aux wide.

    python bench/auxk.py [--batch 1024 --latents 4096 --dead 0,5,50,500]

Times one jitted ``value_and_grad`` of the TopK and BatchTopK losses (d 576, k 32, AuxK's
k_aux = d/2 = 288) with the first ``n`` latents marked dead. jaxinterp runs AuxK by dead count
(:func:`jaxinterp.sae.sparse._by_dead_count`): up to k_aux dead, every token's selection is all
of them, as small dense matmuls at the narrowest of k_aux, k_aux/4, k_aux/16 that holds them;
past k_aux, a per-token top-k. "per-token k_aux" forces that last branch whatever the count (what
AuxK did before either), by patching ``_by_dead_count``. Best of 3 after a warm-up.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import jaxinterp.sae.sparse as sparse
from jaxinterp.sae import LossContext, make_architecture
from jaxinterp.schemas import sae_config


def loss_step_seconds(architecture: str, batch: int, n_latents: int, n_dead: int, d_in: int = 576) -> float:
    arch = make_architecture(sae_config(architecture, n_latents=n_latents, k=32).to_dict())
    x = jax.random.normal(jax.random.key(0), (batch, d_in))
    params, arch_state = arch.init(jax.random.key(1), d_in, n_latents, x[:256])
    dead = jnp.zeros(n_latents, bool).at[:n_dead].set(True)
    step = jax.jit(jax.value_and_grad(lambda p: arch.loss(p, arch_state, x, x, LossContext(jnp.int32(10), dead))[0]))
    jax.block_until_ready(step(params))
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        jax.block_until_ready(step(params))
        best = min(best, time.perf_counter() - began)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--dead", default="0,5,50,500")
    args = parser.parse_args()
    dead_counts = [int(n) for n in args.dead.split(",")]
    by_dead_count = sparse._by_dead_count

    def per_token(dead_mask, k_aux, branch, *operands):
        return branch(k_aux, False, *operands)

    print(f"loss+grad seconds, batch {args.batch}, {args.latents} latents, k_aux 288; widths {sparse.aux_widths(288)}")
    print(f"{'architecture':<13}{'dead':>6}{'by dead count':>15}{'per-token k_aux':>17}{'speed-up':>10}")
    for architecture in ("topk", "batch_topk"):
        for n_dead in dead_counts:
            sparse._by_dead_count = by_dead_count
            ours = loss_step_seconds(architecture, args.batch, args.latents, n_dead)
            sparse._by_dead_count = per_token
            old = loss_step_seconds(architecture, args.batch, args.latents, n_dead)
            print(f"{architecture:<13}{n_dead:>6}{ours:>15.3f}{old:>17.3f}{old / ours:>9.2f}x")
    sparse._by_dead_count = by_dead_count


if __name__ == "__main__":
    main()
