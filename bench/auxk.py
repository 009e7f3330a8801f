"""AuxK cost vs the number of dead latents: widths chosen by dead count vs always k_aux wide.

    python bench/auxk.py [--batch 1024 --latents 4096 --dead 0,5,50,500]

Times one jitted ``value_and_grad`` of the TopK and BatchTopK losses (d 576, k 32, AuxK's
k_aux = d/2 = 288) with the first ``n`` latents marked dead. "one width" is the behaviour before
AuxK ran at :func:`jaxinterp.sae.sparse.aux_widths` (k_aux, k_aux/4, k_aux/16): it is reproduced
here by making ``aux_widths`` return k_aux alone. Best of 3 after a warm-up.
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
    step = jax.jit(jax.value_and_grad(lambda p: arch.loss(p, arch_state, x, LossContext(jnp.int32(10), dead))[0]))
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
    by_dead_count = sparse.aux_widths
    print(f"loss+grad seconds, batch {args.batch}, {args.latents} latents, k_aux 288; widths {by_dead_count(288)}")
    print(f"{'architecture':<13}{'dead':>6}{'by dead count':>15}{'one width':>11}{'speed-up':>10}")
    for architecture in ("topk", "batch_topk"):
        for n_dead in dead_counts:
            sparse.aux_widths = by_dead_count
            ours = loss_step_seconds(architecture, args.batch, args.latents, n_dead)
            sparse.aux_widths = lambda k_aux: (k_aux,) if k_aux else ()
            one = loss_step_seconds(architecture, args.batch, args.latents, n_dead)
            print(f"{architecture:<13}{n_dead:>6}{ours:>15.3f}{one:>11.3f}{one / ours:>9.2f}x")
    sparse.aux_widths = by_dead_count


if __name__ == "__main__":
    main()
