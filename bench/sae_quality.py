"""TopK SAE quality at equal k, width and tokens: jaxinterp vs EleutherAI sparsify, on any store.

    python bench/sae_quality.py                                  # SmolLM2 on the embedded pydoc corpus
    python bench/sae_quality.py --store stores/mine --hook blocks.20.hook_resid_post
    python bench/sae_quality.py --ours "default: ; lr 2x: lr=0.0031; drop massive: massive_tokens=drop"
    python bench/sae_quality.py --only-transcoder --transcoder-layer 12      # the transcoder table alone

Trains jaxinterp with ``jaxinterp train`` itself (configs/train.py's defaults plus each
``--ours`` variant's overrides) and sparsify (its default, schedule-free signum at
5e-3/√(n/2¹⁴), and Adam at Gao et al.'s 2e-4/√(n/2¹⁴) with its linear warm-up/decay, the warm-up
capped at a tenth of the steps since its 1000 would outlast a short run) on the same
batches: those the run's buffer yields (same seed, split, mixing, BOS rule). sparsify's SAE is
saved with its own ``save_to_disk`` and read back through jaxinterp's importer, so every SAE goes
through one evaluation path: on the run's held-out rows, FVU and explained variance over all tokens
and over tokens without massive activations (norm > ``--massive-ratio`` × the median, Sun et al.
2024), L0, dead fraction; through the source model, each SAE spliced in at its hook on the same
held-out contexts, CE-loss recovered (one clean and one zero-ablated pass shared by all).
Goal (issue 21): jaxinterp's default no worse than the better sparsify row on both FVUs and on
CE-loss recovered.

Then a transcoder table (``--transcoder-layer L``, default 12, ``-1`` = none; ``--only-transcoder``
for it alone): jaxinterp's default TopK transcoder ``blocks.L.mlp.hook_in`` → ``blocks.L.hook_mlp_out``
(``jaxinterp train`` with ``target_hook``) vs sparsify's ``transcode=True`` SparseCoder, trained as
its Trainer trains one, on the same batches (massive rows left out as our trainer does for a
transcoder run); holdout target FVU over all tokens and without massive targets, L0, dead
fraction. Without ``--store`` the pair is extracted once from SmolLM2 on pydoc.
Results also go to bench/results/sae_quality_<store>_<hook>.json and transcoder_quality_<store>_<L>.json.
"""

from __future__ import annotations

import argparse
import ast
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace


RESULTS = Path(__file__).parent / "results"


def parse_variants(text: str) -> dict[str, dict]:
    """``"name: field=value, ...; name2: ..."`` -> ``{name: {field: value}}`` (train config fields)."""
    variants = {}
    for part in filter(str.strip, text.split(";")):
        name, _, body = part.partition(":")
        fields = {}
        for item in filter(str.strip, body.split(",")):
            key, _, raw = item.partition("=")
            raw = raw.strip()
            try:
                value = {"true": True, "false": False}.get(raw.lower(), None)
                fields[key.strip()] = ast.literal_eval(raw) if value is None else value
            except (ValueError, SyntaxError):
                fields[key.strip()] = raw
        variants[name.strip()] = fields
    return variants


def pydoc_store(hooks: str, name: str = "quality_store") -> str:
    """SmolLM2 on the embedded pydoc corpus at ``hooks`` (comma-separated), extracted once into results/."""
    from jaxinterp import schemas
    from jaxinterp.config import load_config
    from jaxinterp.extract import extract

    url = str(RESULTS / name)
    if not (Path(url) / "manifest.json").exists():
        fields = {"model": "smollm2", "hooks": hooks, "data": "pydoc", "out": url}
        extract(load_config("configs/extract.py", fields, schemas.EXTRACT, "extract"))
    return url


def train_ours(args, store: str, hook: str, name: str, overrides: dict, workdir: Path):
    """One ``jaxinterp train`` run; returns (loaded SAE, dead fraction, seconds)."""
    from jaxinterp import schemas
    from jaxinterp.config import load_config
    from jaxinterp.export import load_sae
    from jaxinterp.train import train

    out = workdir / f"ours_{len(list(workdir.iterdir()))}"
    fields = {"store": store, "hook": hook, "out": str(out), "seed": args.seed, "steps": args.tokens // args.batch,
              "batch_size": args.batch, "sae.n_latents": args.n_latents, "sae.k": args.k,
              "eval_tokens": args.eval_tokens, "massive_ratio": args.massive_ratio, "checkpoint_every": 10**9,
              **overrides}
    began = time.perf_counter()
    summary = train(load_config("configs/train.py", fields, schemas.TRAIN, "train"), progress=False)
    seconds = time.perf_counter() - began
    evaluation = summary["eval"]["sae"]
    return load_sae(str(out)), evaluation["dead_fraction"], seconds, evaluation.get("shrunk_massive_rows", evaluation.get("dropped_massive_rows"))


def train_sparsify(args, batches, d_in: int, optimizer: str, workdir: Path, transcoder: tuple[str, str] | None = None):
    """sparsify's SparseCoder trained as its Trainer does, saved with ``save_to_disk``; or ``None``.

    ``batches`` yields ``(x, y)`` pairs (``y`` is ``x`` for an SAE). ``transcoder = (hook, target_hook)``
    trains with ``transcode=True`` as its Trainer does then: ``W_dec`` from zero, first-batch
    ``b_enc = −x̄ W_encᵀ`` and ``b_dec = ȳ``, no decoder renormalisation or gradient projection; its
    weights come back through :func:`~jaxinterp.export.portable.to_jaxinterp` (jaxinterp's sparsify
    reader refuses transcoders).
    """
    try:
        import torch
        from schedulefree import ScheduleFreeWrapper
        from sparsify import SparseCoder, SparseCoderConfig
        from sparsify.sign_sgd import SignSGD
        from transformers import get_linear_schedule_with_warmup
    except ImportError:
        return None
    from jaxinterp.export import load_sae

    torch.manual_seed(args.seed)
    steps = args.tokens // args.batch
    transcode = transcoder is not None
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=args.n_latents, k=args.k, transcode=transcode), "cpu",
                      dtype=torch.float32)
    first = next(batches)
    if transcode:  # its trainer's first-batch init of a transcoder: centred pre-activations
        sae.encoder.bias.data = -torch.from_numpy(first[0]).mean(0) @ sae.encoder.weight.data.T
    sae.b_dec.data = torch.from_numpy(first[1]).mean(0)  # its trainer's first-batch b_dec init
    scheduler = None
    if optimizer == "signum":
        opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(),
                                             "lr": 5e-3 / (args.n_latents / 2**14) ** 0.5}]), momentum=0.95)
        opt.train()
    else:  # its "adam" option: Gao et al.'s lr, warm-up lr_warmup_steps (1000) then linear decay to 0
        opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (args.n_latents / 2**14) ** 0.5)
        scheduler = get_linear_schedule_with_warmup(opt, min(1000, steps // 10), steps)
    fired = torch.zeros(args.n_latents, dtype=torch.bool)
    began = time.perf_counter()
    for step in range(steps):
        x, y = map(torch.from_numpy, first if step == 0 else next(batches))
        if not transcode:
            sae.set_decoder_norm_to_unit_norm()
        out = sae(x=x, y=y, dead_mask=None)
        fired[out.latent_indices.flatten()] = True
        out.fvu.backward()
        if not transcode:
            sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        if scheduler is not None:
            scheduler.step()
    if optimizer == "signum":
        opt.eval()  # schedule-free: evaluate at the averaged weights
    seconds = time.perf_counter() - began
    dead = float((~fired).float().mean())
    if transcode:
        from jaxinterp.export.portable import PortableSAE, to_jaxinterp

        weights = {"W_enc": sae.encoder.weight.detach().numpy().T, "b_enc": sae.encoder.bias.detach().numpy(),
                   "W_dec": sae.W_dec.detach().numpy(), "b_dec": sae.b_dec.detach().numpy()}
        portable = PortableSAE("topk", weights, d_in, args.n_latents, args.k, transcoder[0], {},
                               target_hook=transcoder[1])
        return SimpleNamespace(**dict(zip(("architecture", "params", "arch_state"), to_jaxinterp(portable)))), dead, seconds, None
    sae.set_decoder_norm_to_unit_norm()
    path = workdir / f"sparsify_{optimizer}"
    sae.save_to_disk(path)
    return load_sae(str(path)), dead, seconds, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", help="any jaxinterp store; default: SmolLM2 on pydoc, extracted once")
    parser.add_argument("--hook", default="", help="default: the store's only hook, else blocks.12.hook_resid_post")
    parser.add_argument("--tokens", type=int, default=262144)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--ce-contexts", type=int, default=32)
    parser.add_argument("--n-latents", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--massive-ratio", type=float, default=10.0)
    parser.add_argument("--ours", default="jaxinterp: ; jaxinterp, drop massive: massive_tokens=drop; jaxinterp, keep massive: massive_tokens=keep",
                        help="jaxinterp rows: 'name: field=value, ...; ...' over train config fields")
    parser.add_argument("--sparsify", default="signum,adam", help="sparsify optimizers, one row each ('' = none)")
    parser.add_argument("--backend", default="auto", help="source-model backend for the CE rows")
    parser.add_argument("--json", default="")
    parser.add_argument("--transcoder-layer", type=int, default=12,
                        help="the transcoder table's layer L (blocks.L.mlp.hook_in -> blocks.L.hook_mlp_out); -1 = none")
    parser.add_argument("--only-transcoder", action="store_true", help="the transcoder table alone")
    parser.add_argument("--ours-transcoder", default="jaxinterp transcoder: ",
                        help="the transcoder table's jaxinterp rows, as --ours (target_hook is set for each)")
    args = parser.parse_args()
    if not args.only_transcoder:
        sae_table(args)
    if args.transcoder_layer >= 0:
        transcoder_table(args)


def sae_table(args) -> None:
    """The SAE rows: every ``--ours`` variant and sparsify optimizer on ``--hook``, with CE-loss recovered."""

    from jaxinterp.buffer import ActivationBuffer
    from jaxinterp.eval.contexts import heldout_context_ids, read_contexts
    from jaxinterp.eval.holdout import evaluate_reconstruction
    from jaxinterp.eval.splice import ce_loss_recovered, sae_edit, spliced_losses, zero_ablation
    from jaxinterp.models import load_source_model
    from jaxinterp.schemas import TRAIN
    from jaxinterp.config import load_config
    from jaxinterp.store import open_store

    store_url = args.store or pydoc_store(args.hook or "blocks.12.hook_resid_post")
    store = open_store(store_url)
    hook = args.hook or (store.hook_names[0] if len(store.hook_names) == 1 else "blocks.12.hook_resid_post")
    defaults = load_config("configs/train.py", {"store": store_url, "hook": hook}, TRAIN, "train")
    # The buffer `jaxinterp train` builds (one process, one stream): the same batches and holdout.
    buffer = ActivationBuffer(store, [hook], args.batch, args.seed, defaults["holdout_fraction"],
                              defaults["mixing_chunks"], defaults["exclude_bos"], streams=1)
    holdout = buffer.holdout(args.eval_tokens)[hook]
    loaded = {}
    with tempfile.TemporaryDirectory(prefix="sae_quality_") as tmp:
        workdir = Path(tmp)
        for name, overrides in parse_variants(args.ours).items():
            loaded[name] = train_ours(args, store_url, hook, name, overrides, workdir)
        for optimizer in filter(None, args.sparsify.split(",")):
            batches = ((batch[hook], batch[hook]) for batch in buffer._numpy_batches())
            result = train_sparsify(args, batches, holdout.shape[1], optimizer, workdir)
            if result is None:
                print("sparsify: not installed (pip install -e '.[bench]')")
                break
            loaded[f"sparsify {optimizer}"] = result

        rows = {}
        for name, (sae, dead, seconds, excluded) in loaded.items():
            metrics, _ = evaluate_reconstruction(sae.architecture, sae.params, sae.arch_state, holdout,
                                                 massive_ratio=args.massive_ratio)
            rows[name] = {**metrics, "dead_fraction": dead, "train_seconds": seconds, "massive_training_rows": excluded}
        ids = heldout_context_ids(store, buffer.split.holdout)[: args.ce_contexts]
        if len(ids) and args.ce_contexts:
            contexts = read_contexts(store, ids, [hook]).tokens
            model = load_source_model(store.manifest["model"], backend=args.backend, dtype=store.manifest["model_dtype"])
            edits = {name: sae_edit(hook, sae.architecture, sae.params, sae.arch_state, buffer.drop_bos)
                     for name, (sae, *_rest) in loaded.items()}
            losses = spliced_losses(model, contexts, {**edits, "zero ablation": zero_ablation(hook, buffer.drop_bos)})
            for name in loaded:
                rows[name].update(ce_loss_recovered=ce_loss_recovered(losses["ce_clean"], losses[f"ce_{name}"],
                                                                      losses["ce_zero ablation"]),
                                  ce_loss_spliced=losses[f"ce_{name}"], kl_spliced=losses[f"kl_{name}"])
            ce = {"clean": losses["ce_clean"], "zero_ablated": losses["ce_zero ablation"],
                  "tokens_predicted": int(contexts.shape[0] * (contexts.shape[1] - 1))}
        else:
            ce = {}

    print(f"{store.manifest.get('model_name')} {hook} on {store.manifest.get('dataset_path')}: "
          f"{args.tokens // args.batch * args.batch:,} training tokens, {len(holdout):,} holdout tokens "
          f"({next(iter(rows.values()))['massive_fraction']:.2%} massive at {args.massive_ratio:g}× the median norm), "
          f"n_latents {args.n_latents}, k {args.k}, batch {args.batch}")
    if ce:
        print(f"CE through the model on {ce['tokens_predicted']:,} held-out tokens: clean {ce['clean']:.3f}, "
              f"zero-ablated {ce['zero_ablated']:.3f}")
    print(f"{'':28}{'FVU':>8}{'FVU nm':>8}{'L0':>7}{'dead':>7}{'CE rec':>8}{'KL':>7}{'train s':>9}")
    for name, row in rows.items():
        print(f"{name:28}{row['fvu']:8.4f}{row['fvu_nonmassive']:8.4f}{row['l0']:7.1f}{row['dead_fraction']:7.3f}"
              f"{row.get('ce_loss_recovered', float('nan')):8.4f}{row.get('kl_spliced', float('nan')):7.3f}"
              f"{row['train_seconds']:9.1f}")
    peers = [name for name in rows if name.startswith("sparsify")]
    if peers:
        best = {key: min(rows[p][key] for p in peers) for key in ("fvu", "fvu_nonmassive")}
        best["ce_loss_recovered"] = max(rows[p].get("ce_loss_recovered", float("nan")) for p in peers)
        for name in rows:
            if name in peers:
                continue
            print(f"{name} ÷ best sparsify: FVU {rows[name]['fvu'] / best['fvu']:.3f}, FVU non-massive "
                  f"{rows[name]['fvu_nonmassive'] / best['fvu_nonmassive']:.3f} (goal ≤ 1); CE-loss recovered "
                  f"{rows[name].get('ce_loss_recovered', float('nan')) - best['ce_loss_recovered']:+.4f} (goal ≥ 0)")
    path = Path(args.json or RESULTS / f"sae_quality_{Path(store_url).name}_{hook}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "hook": hook, "ce": ce, "results": rows}, indent=2))


def transcoder_table(args) -> None:
    """TopK transcoders ``blocks.L.mlp.hook_in`` → ``blocks.L.hook_mlp_out``: ``jaxinterp train`` (defaults,
    ``target_hook`` set) vs sparsify's ``transcode=True`` on the same batches; holdout target FVU.

    The batches are those of the run's buffer, rows massive at either hook left out as ``jaxinterp
    train`` does for a run with a transcoder (shrinking would break the input/output pairs).
    """
    from jaxinterp.buffer import ActivationBuffer
    from jaxinterp.config import load_config
    from jaxinterp.eval.holdout import evaluate_reconstruction
    from jaxinterp.schemas import TRAIN
    from jaxinterp.store import open_store

    hook, target = f"blocks.{args.transcoder_layer}.mlp.hook_in", f"blocks.{args.transcoder_layer}.hook_mlp_out"
    store_url = args.store or pydoc_store(f"{hook},{target}", f"quality_store_tc_{args.transcoder_layer}")
    store = open_store(store_url)
    missing = [name for name in (hook, target) if name not in store.hook_names]
    if missing:
        print(f"transcoder table: {store_url} has no {', '.join(missing)}; skipped (--transcoder-layer -1 to not ask)")
        return
    defaults = load_config("configs/train.py", {"store": store_url, "hook": hook, "target_hook": target}, TRAIN, "train")
    buffer = ActivationBuffer(store, [hook, target], args.batch, args.seed, defaults["holdout_fraction"],
                              defaults["mixing_chunks"], defaults["exclude_bos"], streams=1, massive_mode="drop")
    if defaults["massive_tokens"] != "keep":  # as the trainer does, before the first batch
        buffer.massive_norms = buffer.estimate_massive_norms(defaults["norm_tokens"], args.massive_ratio)
    holdout = buffer.holdout(args.eval_tokens)
    loaded = {}
    with tempfile.TemporaryDirectory(prefix="transcoder_quality_") as tmp:
        workdir = Path(tmp)
        for name, overrides in parse_variants(args.ours_transcoder).items():
            loaded[name] = train_ours(args, store_url, hook, name, {"target_hook": target, **overrides}, workdir)
        for optimizer in filter(None, args.sparsify.split(",")):
            batches = ((batch[hook], batch[target]) for batch in buffer._numpy_batches())
            result = train_sparsify(args, batches, holdout[hook].shape[1], optimizer, workdir, (hook, target))
            if result is None:
                print("sparsify: not installed (pip install -e '.[bench]')")
                break
            loaded[f"sparsify transcoder {optimizer}"] = result
    rows = {}
    for name, (sae, dead, seconds, excluded) in loaded.items():
        metrics, _ = evaluate_reconstruction(sae.architecture, sae.params, sae.arch_state, holdout[hook],
                                             massive_ratio=args.massive_ratio, y=holdout[target])
        rows[name] = {**metrics, "dead_fraction": dead, "train_seconds": seconds, "massive_training_rows": excluded}
    print(f"{store.manifest.get('model_name')} transcoder {hook} -> {target} on {store.manifest.get('dataset_path')}: "
          f"{args.tokens // args.batch * args.batch:,} training tokens, {len(holdout[hook]):,} holdout tokens "
          f"({next(iter(rows.values()))['massive_fraction']:.2%} massive targets), n_latents {args.n_latents}, "
          f"k {args.k}, batch {args.batch}; FVU of the target")
    print(f"{'':32}{'FVU':>8}{'FVU nm':>8}{'L0':>7}{'dead':>7}{'train s':>9}")
    for name, row in rows.items():
        print(f"{name:32}{row['fvu']:8.4f}{row['fvu_nonmassive']:8.4f}{row['l0']:7.1f}{row['dead_fraction']:7.3f}"
              f"{row['train_seconds']:9.1f}")
    peers = [name for name in rows if name.startswith("sparsify")]
    if peers:
        best = {key: min(rows[p][key] for p in peers) for key in ("fvu", "fvu_nonmassive")}
        for name in rows:
            if name not in peers:
                print(f"{name} ÷ best sparsify: FVU {rows[name]['fvu'] / best['fvu']:.3f}, FVU non-massive "
                      f"{rows[name]['fvu_nonmassive'] / best['fvu_nonmassive']:.3f} (goal ≤ 1)")
    path = RESULTS / f"transcoder_quality_{Path(store_url).name}_{args.transcoder_layer}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "hook": hook, "target_hook": target, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
