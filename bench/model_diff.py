"""Model diffing on a real pair: a crosscoder over SmolLM2 and its ROT13 fine-tune, and what its exclusive latents read.

    python bench/finetune_pair.py --model smollm2 --out models/smollm2_rot13 --steps 200 --batch 4 --context 64 --lr 3e-4
    python bench/model_diff.py --tuned models/smollm2_rot13 --work diff [--hook blocks.15.hook_resid_post]

Steps, each through jaxinterp's own commands (a finished step is reused on a rerun):
  1. extract: one store of both models' ``--hook`` on the same token stream (``--config.model=base,tuned``) over
     the pair's ``mix.jsonl``, every pydoc document plain and ROT13-enciphered (alternating, so the store's ``doc``
     parity says which);
  2. train: a crosscoder over ``hook`` and ``m1/hook`` (BatchTopK by default, Minder et al. 2025);
  3. eval: per-source FVU and the relative decoder norms ``r = ‖W_dec,tuned‖ / (‖W_dec,base‖ + ‖W_dec,tuned‖)``;
  4. the check the diff should pass: on held-out tokens, the share of each latent group's firings that fall on
     ROT13 text. The fine-tune learnt ROT13; latents exclusive to it (r > 0.9), or leaning most towards it (the
     highest 2% of r), should read ciphered text more than the shared ones do.
Prints a table and writes ``<work>/model_diff.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxinterp.store import open_store  # noqa: E402


def jaxinterp(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "jaxinterp.cli", *args], check=True, cwd=ROOT)


def held_out_rows(store_url: str, hooks: list[str], train_cfg: dict, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x [rows, S, d], is_rot13 [rows])`` of the run's held-out chunks (its own split), BOS rows dropped."""
    from jaxinterp.buffer import split_chunks

    store = open_store(store_url)
    per_chunk = store.layout.rows_per_chunk
    split = split_chunks(-(-store.n_tokens // per_chunk), train_cfg["holdout_fraction"], train_cfg["seed"])
    xs, docs = [], []
    for chunk in split.holdout:
        start, stop = int(chunk) * per_chunk, min((int(chunk) + 1) * per_chunk, store.n_tokens)
        keep = store.read("pos", start, stop) > 0
        xs.append(np.stack([store.read(hook, start, stop) for hook in hooks], axis=1)[keep])
        docs.append(store.read("doc", start, stop)[keep])
        if sum(map(len, xs)) >= tokens:
            break
    return np.concatenate(xs)[:tokens].astype(np.float32), (np.concatenate(docs)[:tokens] % 2 == 1)


def firing_on_rot13(run: Path, store_url: str, hooks: list[str], tokens: int, groups: dict[str, np.ndarray]
                    ) -> dict[str, dict[str, float]]:
    """Per latent group: firings per token on plain and on ROT13 held-out tokens, and the ROT13 share."""
    import jax.numpy as jnp

    from jaxinterp.runs import load_trained
    from jaxinterp.sae import dense_latents

    trained = load_trained(str(run))
    x, rot13 = held_out_rows(store_url, hooks, trained.run_config["train"], tokens)
    latents = np.asarray(dense_latents(trained.architecture.encode(trained.state.params, trained.state.arch_state,
                                                                    jnp.asarray(x)), trained.config["d_sae"]))
    out = {}
    for name, ids in groups.items():
        fires = latents[:, ids] > 0
        plain, cipher = fires[~rot13].sum(), fires[rot13].sum()
        out[name] = {"latents": int(len(ids)), "fires_per_plain_token": float(plain / max((~rot13).sum(), 1)),
                     "fires_per_rot13_token": float(cipher / max(rot13.sum(), 1)),
                     "rot13_share": float(cipher / max(plain + cipher, 1))}
    out["tokens"] = {"plain": int((~rot13).sum()), "rot13": int(rot13.sum())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2")
    parser.add_argument("--tuned", required=True, help="the fine-tuned copy (bench/finetune_pair.py --out)")
    parser.add_argument("--work", required=True, help="directory for the store, run and eval")
    parser.add_argument("--hook", default="blocks.15.hook_resid_post")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--activation", default="batch_topk")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    args = parser.parse_args()
    work = Path(args.work).absolute()
    store, run, evaluated = work / "store", work / "run", work / "eval"
    hooks = [args.hook, f"m1/{args.hook}"]
    jaxinterp("extract", "--config", "configs/extract.py", f"--config.model={args.base},{args.tuned}",
              f"--config.data={Path(args.tuned) / 'mix.jsonl'}", f"--config.hooks={args.hook}", f"--config.out={store}",
              f"--config.max_tokens={args.tokens}", "--config.context_size=128")
    jaxinterp("train", "--config", "configs/train.py", f"--config.store={store}", f"--config.hook={','.join(hooks)}",
              "--config.sae.architecture=crosscoder", f"--config.sae.activation={args.activation}",
              f"--config.sae.k={args.k}", f"--config.sae.n_latents={args.latents}", f"--config.steps={args.steps}",
              f"--config.batch_size={args.batch}", f"--config.out={run}", "--config.mesh.data=1")
    jaxinterp("eval", "--config", "configs/eval.py", f"--config.run={run}", f"--config.out={evaluated}",
              "--config.ce_contexts=0", f"--config.eval_tokens={args.eval_tokens}")
    result = json.loads((evaluated / "eval.json").read_text())
    relative = np.load(evaluated / "relative_norms_0_1.npy")
    live = np.isfinite(relative)
    # The papers' cut-offs, and (since BatchTopK rarely drives a side's norm to zero) the two tails of r.
    order = np.flatnonzero(live)[np.argsort(relative[live])]
    tail = max(1, len(order) // 50)
    groups = {"base-only (r < 0.1)": np.flatnonzero(live & (relative < 0.1)),
              "shared (0.1 ≤ r ≤ 0.9)": np.flatnonzero(live & (relative >= 0.1) & (relative <= 0.9)),
              "tuned-only (r > 0.9)": np.flatnonzero(live & (relative > 0.9)),
              "lowest 2% of r (base-leaning)": order[:tail], "middle 96% of r": order[tail:-tail],
              "highest 2% of r (tuned-leaning)": order[-tail:]}
    reading = firing_on_rot13(run, str(store), hooks, args.eval_tokens, groups)
    summary = {"settings": vars(args), "fvu_per_source": result["fvu_per_source"], "l0": result["l0"],
               "relative_norms": {k: v for k, v in result["relative_norms"][0].items() if not k.startswith("latents_")},
               "relative_norm_quantiles": np.nanquantile(relative, [0.05, 0.25, 0.5, 0.75, 0.95]).round(3).tolist(),
               "firing": reading}
    print(f"FVU base {result['fvu_per_source'][0]:.3f}, tuned {result['fvu_per_source'][1]:.3f}; L0 {result['l0']:.1f}")
    print(f"held-out tokens: {reading['tokens']['plain']} plain, {reading['tokens']['rot13']} ROT13; r quantiles "
          f"(5, 25, 50, 75, 95%): {summary['relative_norm_quantiles']}")
    print("| latents | count | r range | fires / plain token | fires / ROT13 token | ROT13 share of firings |")
    print("|---|---:|---|---:|---:|---:|")
    for name, ids in groups.items():
        row, span = reading[name], (f"{relative[ids].min():.3f}–{relative[ids].max():.3f}" if len(ids) else "–")
        print(f"| {name} | {row['latents']} | {span} | {row['fires_per_plain_token']:.3f} | "
              f"{row['fires_per_rot13_token']:.3f} | {row['rot13_share']:.3f} |")
    (work / "model_diff.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
