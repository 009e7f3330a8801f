"""``sae.b_dec_init``: the mean, the geometric median (Weiszfeld) or zero, for SAEs and transcoders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import schemas
from jaxinterp.config import ConfigError, load_config
from jaxinterp.sae import make_architecture
from jaxinterp.sae.base import b_dec_init, geometric_median


def test_geometric_median_by_hand():
    # 1-D: the median of {0, 1, 10} is 1 (the mean, 11/3, is pulled by the outlier).
    assert float(geometric_median(jnp.array([[0.0], [1.0], [10.0]]))[0]) == pytest.approx(1.0, abs=1e-5)
    # The four corners of a unit square: by symmetry the centre. A far fifth point moves the mean by
    # about 20 but the median less than one unit, toward it.
    corners = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert np.allclose(geometric_median(corners), [0.5, 0.5], atol=1e-5)
    with_outlier = jnp.concatenate([corners, jnp.array([[100.0, 100.0]])])
    median = np.asarray(geometric_median(with_outlier))
    assert np.all(median > 0.5) and np.all(median < 1.5) and float(jnp.mean(with_outlier[:, 0])) > 20


def test_geometric_median_minimises_the_sum_of_distances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 16)).astype(np.float32)
    x[:4] *= 100  # massive rows pull the mean, not the median
    median = geometric_median(x)

    def cost(m):
        return float(jnp.sum(jnp.linalg.norm(x - m, axis=-1)))

    assert cost(median) < cost(x.mean(0))
    for _ in range(8):
        assert cost(median) <= cost(median + 1e-2 * rng.normal(size=16).astype(np.float32))


@pytest.mark.parametrize("transcode", [False, True])
def test_init_uses_the_method(transcode):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(256, 8)).astype(np.float32), rng.normal(size=(256, 6)).astype(np.float32) + 3
    target = y if transcode else x
    for method in ("mean", "geometric_median", "zero"):
        arch = make_architecture({"architecture": "topk", "k": 4, "transcode": transcode, "b_dec_init": method})
        params, _ = arch.init(jax.random.key(0), 8, 32, x, 6 if transcode else None, y if transcode else None)
        np.testing.assert_allclose(params["b_dec"], b_dec_init(target, method), rtol=1e-6)
    assert np.all(b_dec_init(target, "zero") == 0)
    # The default stays the mean, bitwise: runs trained before the field existed resume unchanged.
    default = make_architecture({"architecture": "topk", "k": 4, "transcode": transcode})
    params, _ = default.init(jax.random.key(0), 8, 32, x, 6 if transcode else None, y if transcode else None)
    assert np.array_equal(params["b_dec"], jnp.mean(jnp.asarray(target), axis=0))


def test_config_names_the_field():
    assert load_config("configs/train.py", {"store": "s", "out": "o"}, schemas.TRAIN, "train")["sae"]["b_dec_init"] \
        == "mean"
    with pytest.raises(ConfigError, match="sae.b_dec_init"):
        load_config("configs/train.py", {"store": "s", "out": "o", "sae.b_dec_init": "median"}, schemas.TRAIN, "train")
