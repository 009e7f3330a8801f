"""Probe trainer on fixed features: agreement with scikit-learn, sparsity, k-sparse selection, sharding."""

from __future__ import annotations

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn import linear_model, metrics as skm  # noqa: E402

from jaxinterp.config import ConfigError  # noqa: E402
from jaxinterp.probe import (SparseRows, Splits, apply_regime, encode_targets, fit_probes, mean_difference,  # noqa: E402
                             pool_sparse, split_rows)
from jaxinterp.probe import metrics as jm  # noqa: E402


def _cfg(**overrides):
    cfg = {"families": "logistic", "C": "1.0", "k": "1,2,5", "penalty": "l2", "l1_ratio": 0.5, "max_iter": 2000,
           "tol": 1e-7, "standardize": False, "select_by": "auto", "seed": 0,
           "mlp": {"hidden": 64, "steps": 400, "learning_rate": 1e-2}}
    cfg.update(overrides)
    return cfg


def _task(n_classes: int, n: int = 1500, d: int = 48, seed: int = 0):
    """Gaussian features whose class depends linearly on a few directions, plus label noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32) * rng.uniform(0.5, 2.0, d).astype(np.float32)
    score = x @ rng.normal(size=(d, n_classes)) + rng.gumbel(size=(n, n_classes)) * 2.0
    y = np.argmax(score, 1).astype(np.int32) if n_classes > 2 else (score[:, 0] > score[:, 1]).astype(np.int32)
    splits = split_rows(y, "binary" if n_classes == 2 else "multiclass", 0.2, 0.2, seed)
    return x, y, splits


@pytest.mark.parametrize("n_classes", [2, 4])
def test_l2_logistic_reaches_sklearns_optimum(n_classes):
    x, y, splits = _task(n_classes)
    for C in (0.01, 1.0):
        probe = fit_probes({"h": x}, y, "binary" if n_classes == 2 else "multiclass", splits,
                           _cfg(C=str(C)))[0]
        reference = linear_model.LogisticRegression(C=C, max_iter=10_000, tol=1e-10).fit(x[splits.train],
                                                                                          y[splits.train])
        np.testing.assert_allclose(probe.tensors["W"], reference.coef_.T, atol=2e-3 * np.abs(reference.coef_).max())
        np.testing.assert_allclose(probe.tensors["b"], reference.intercept_, atol=2e-3)
        sk_accuracy = reference.score(x[splits.test], y[splits.test])
        assert abs(probe.record["test"]["accuracy"] - sk_accuracy) <= 0.005
        sk_auroc = skm.roc_auc_score(y[splits.test], reference.predict_proba(x[splits.test])[:, 1]
                                     if n_classes == 2 else reference.predict_proba(x[splits.test]), multi_class="ovr")
        assert abs(probe.record["test"]["auroc"] - sk_auroc) < 2e-3


def test_standardization_is_folded_into_exported_weights():
    x, y, splits = _task(2)
    x = x * 30 + 5  # badly scaled raw features
    probe = fit_probes({"h": x}, y, "binary", splits, _cfg(standardize=True, C="0.1"))[0]
    z = (x - x[splits.train].mean(0)) / x[splits.train].std(0)
    reference = linear_model.LogisticRegression(C=0.1, max_iter=10_000, tol=1e-10).fit(z[splits.train], y[splits.train])
    np.testing.assert_allclose(x @ probe.tensors["W"][:, 0] + probe.tensors["b"][0],
                               reference.decision_function(z), atol=2e-3)


def test_l1_gives_sparse_weights_like_sklearn():
    x, y, splits = _task(2, d=64)
    C = 0.005
    probe = fit_probes({"h": x}, y, "binary", splits, _cfg(penalty="l1", C=str(C), max_iter=4000))[0]
    reference = linear_model.LogisticRegression(C=C, l1_ratio=1.0, solver="saga", max_iter=20_000, tol=1e-8).fit(
        x[splits.train], y[splits.train])
    ours = probe.tensors["W"][:, 0]
    assert 0 < probe.record["nonzero_weights"] < 0.5 * x.shape[1]
    np.testing.assert_array_equal(ours != 0, reference.coef_[0] != 0)
    np.testing.assert_allclose(ours, reference.coef_[0], atol=5e-3)
    dense = fit_probes({"h": x}, y, "binary", splits, _cfg(C=str(C)))[0]
    assert dense.record["nonzero_weights"] == x.shape[1]


def test_elastic_net_between_l1_and_l2():
    x, y, splits = _task(2, d=64)
    counts = [fit_probes({"h": x}, y, "binary", splits, _cfg(penalty=p, C="0.005", l1_ratio=0.5, max_iter=3000))[0]
              .record["nonzero_weights"] for p in ("l1", "elasticnet", "l2")]
    assert counts[0] < counts[1] <= counts[2]


def test_ksparse_picks_the_mean_difference_latents_dense_and_sparse():
    rng = np.random.default_rng(1)
    n, d = 600, 200
    latents = np.where(rng.random((n, d)) < 0.15, rng.exponential(1.0, (n, d)), 0.0).astype(np.float32)
    y = (latents[:, 7] + latents[:, 42] + 0.05 * rng.normal(size=n) > 0.2).astype(np.int32)
    splits = split_rows(y, "binary", 0.2, 0.2, 0)
    train = splits.train
    expected = np.argsort(-np.abs(latents[train][y[train] == 1].mean(0) - latents[train][y[train] == 0].mean(0)),
                          kind="stable")
    rows, cols = np.nonzero(latents)
    sparse = SparseRows(np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]), cols.astype(np.int32),
                        latents[rows, cols], d)
    np.testing.assert_allclose(mean_difference(sparse, y, train), np.abs(
        latents[train][y[train] == 1].mean(0) - latents[train][y[train] == 0].mean(0)), rtol=1e-5, atol=1e-7)
    for features in (latents, sparse):
        fitted = fit_probes({"h": features}, y, "binary", splits, _cfg(families="ksparse", k="1,2,5", C="0.1,1"))
        by_k = {f.record["k"]: f for f in fitted}
        assert sorted(by_k) == [1, 2, 5]
        for k, probe in by_k.items():
            assert probe.record["latent_ids"] == expected[:k].tolist()
            assert probe.tensors["W"].shape == (k, 1)
        assert set(by_k[2].record["latent_ids"]) == {7, 42}
        assert by_k[2].record["test"]["accuracy"] > by_k[1].record["test"]["accuracy"] > 0.7


def test_pool_sparse_matches_dense_pooling():
    rng = np.random.default_rng(2)
    dense = np.where(rng.random((50, 30)) < 0.2, rng.random((50, 30)), 0.0).astype(np.float32)
    group = np.sort(rng.integers(0, 8, 50))
    group[:8] = np.arange(8)
    group.sort()
    rows, cols = np.nonzero(dense)
    sparse = SparseRows(np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=50))]), cols.astype(np.int32),
                        dense[rows, cols], 30)
    for pooling, reduce in (("mean", np.mean), ("max", np.max)):
        pooled = pool_sparse(sparse, group, 8, pooling)
        back = np.zeros((8, 30), np.float32)
        back[np.repeat(np.arange(8), np.diff(pooled.indptr)), pooled.indices] = pooled.values
        np.testing.assert_allclose(back, np.stack([reduce(dense[group == g], 0) for g in range(8)]), rtol=1e-6)


def test_metrics_match_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300).astype(np.int32)
    scores = np.round(rng.normal(size=300) + y, 1).astype(np.float32)[:, None]  # rounding makes ties
    weight = (rng.random(300) < 0.7).astype(np.float32)
    m = weight > 0
    assert abs(float(jm.auroc(scores, y, weight)) - skm.roc_auc_score(y[m], scores[m, 0])) < 1e-6
    assert abs(float(jm.f1(scores, y, weight)) - skm.f1_score(y[m], scores[m, 0] > 0)) < 1e-6
    assert abs(float(jm.accuracy(scores, y, weight)) - skm.accuracy_score(y[m], scores[m, 0] > 0)) < 1e-6
    y3 = rng.integers(0, 3, 300).astype(np.int32)
    logits3 = (rng.normal(size=(300, 3)) + np.eye(3)[y3]).astype(np.float32)
    prob = np.exp(logits3) / np.exp(logits3).sum(1, keepdims=True)
    assert abs(float(jm.auroc(logits3, y3, weight)) - skm.roc_auc_score(y3[m], prob[m], multi_class="ovr")) < 1e-5
    assert abs(float(jm.f1(logits3, y3, weight)) - skm.f1_score(y3[m], logits3[m].argmax(1), average="macro")) < 1e-6
    target = rng.normal(size=300).astype(np.float32)
    guess = (target + rng.normal(size=300) * 0.5).astype(np.float32)[:, None]
    assert abs(float(jm.r2(guess, target, weight)) - skm.r2_score(target[m], guess[m, 0])) < 1e-5


def test_ridge_matches_sklearn_for_float_targets():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 20)).astype(np.float32)
    target = (x @ rng.normal(size=20) + rng.normal(size=500)).astype(np.float32)
    targets, kind, _ = encode_targets(target.tolist())
    assert kind == "regression"
    splits = split_rows(targets, kind, 0.2, 0.2, 0)
    probe = fit_probes({"h": x}, targets, kind, splits, _cfg(families="ridge", C="0.1,10"))[0]
    reference = linear_model.Ridge(alpha=1 / probe.record["C"]).fit(x[splits.train], targets[splits.train])
    np.testing.assert_allclose(probe.tensors["W"][:, 0], reference.coef_, rtol=1e-3, atol=1e-4)
    assert abs(probe.record["test"]["r2"] - reference.score(x[splits.test], targets[splits.test])) < 1e-4


def test_mlp_probe_learns_what_a_linear_probe_cannot():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1200, 8)).astype(np.float32)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(np.int32)  # XOR: no linear probe beats chance
    splits = split_rows(y, "binary", 0.2, 0.2, 0)
    fitted = {f.record["family"]: f for f in fit_probes({"h": x}, y, "binary", splits,
                                                        _cfg(families="logistic,mlp", C="1,100"))}
    assert fitted["mlp"].record["test"]["accuracy"] > 0.9
    assert fitted["logistic"].record["test"]["accuracy"] < 0.65
    assert set(fitted["mlp"].tensors) == {"W_in", "b_in", "W_out", "b_out"}


def test_sweep_over_hooks_and_C_sharded_over_rows_matches_one_device():
    from jaxinterp.mesh import make_mesh

    x, y, splits = _task(3, n=803)  # not a multiple of 8: padding rows must not count
    features = {f"h{i}": x * (i + 1) + i for i in range(3)}
    cfg = _cfg(C="0.01,0.1,1", standardize=True)
    one = fit_probes(features, y, "multiclass", splits, cfg)
    eight = fit_probes(features, y, "multiclass", splits, cfg, mesh=make_mesh(data=8, model=1))
    for a, b in zip(one, eight):
        assert a.record["C"] == b.record["C"]
        np.testing.assert_allclose(a.tensors["W"], b.tensors["W"], atol=2e-3 * np.abs(a.tensors["W"]).max())
        assert abs(a.record["test"]["accuracy"] - b.record["test"]["accuracy"]) < 1e-6


def test_splits_are_stratified_seeded_and_regimes_touch_train_only():
    y = np.repeat([0, 1, 2], [300, 200, 100]).astype(np.int32)
    a, b = split_rows(y, "multiclass", 0.2, 0.2, 7), split_rows(y, "multiclass", 0.2, 0.2, 7)
    assert all((p == q).all() for p, q in zip(a, b))
    assert len(set(a.train) | set(a.validation) | set(a.test)) == len(y)
    assert np.bincount(y[a.test]).tolist() == [60, 40, 20]
    yb = (y > 0).astype(np.int32)
    s = split_rows(yb, "binary", 0.2, 0.2, 0)
    train, noisy = apply_regime(s.train, yb, "binary", 0, subsample=200, positive_fraction=0.1, label_noise=0.1)
    assert len(train) <= 200 and abs(noisy[train].mean() - 0.1) < 0.1
    assert (noisy[s.test] == yb[s.test]).all() and (noisy[s.validation] == yb[s.validation]).all()
    assert (noisy[train] != yb[train]).sum() == round(0.1 * len(train))


def test_config_errors_name_the_field():
    x, y, splits = _task(2, n=200)
    with pytest.raises(ConfigError, match="'families'"):
        fit_probes({"h": x}, y, "binary", splits, _cfg(families="svm"))
    with pytest.raises(ConfigError, match="'families'"):
        fit_probes({"h": x}, y, "binary", splits, _cfg(families="ridge"))
    with pytest.raises(ConfigError, match="'C'"):
        fit_probes({"h": x}, y, "binary", splits, _cfg(C="abc"))
    with pytest.raises(ConfigError, match="'label_field'"):
        encode_targets(["a"] * 10)
    assert isinstance(splits, Splits)
