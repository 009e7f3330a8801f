"""Device meshes and sharding written as data: ``(regex, PartitionSpec)`` rules over param paths.

Model code never names devices. A rules table maps the path of every leaf in a pytree (params,
optimizer state, train state) to a ``PartitionSpec`` over the mesh axes ``('data', 'model')``;
the first matching regex wins and unmatched leaves are replicated. Optimizer state follows its
params automatically because its leaf paths contain the param names (``...mu['W_enc']``).

Example::

    mesh = make_mesh(data=-1, model=1)
    shardings = tree_shardings(jax.eval_shape(init_fn, key), SAE_RULES, mesh)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxinterp.config import ConfigError

__all__ = ["make_mesh", "tree_shardings", "batch_sharding", "Rules", "SAE_RULES"]

Rules = Sequence[tuple[str, P]]

# design.md §5: latents on 'model'; b_dec replicated; per-latent stats follow the latent axis.
SAE_RULES: Rules = (
    (r"W_enc", P(None, "model")),
    (r"W_dec", P("model", None)),
    (r"b_enc|threshold", P("model")),
    (r"tokens_since_fired|fire_count", P("model")),
)


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``('data', 'model')`` mesh; ``-1`` for one axis means "all remaining devices".

    An explicit mesh smaller than the device count uses the first ``data * model`` devices.

    Axis types are Auto on purpose: the SAE step lets XLA place the collectives from the
    in/out shardings we give ``jax.jit``.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and model == -1:
        raise ConfigError("config fields 'mesh.data' and 'mesh.model' cannot both be -1")
    data = n // model if data == -1 else data
    model = n // data if model == -1 else model
    if data < 1 or model < 1 or data * model > n:
        raise ConfigError(
            f"config fields 'mesh.data' x 'mesh.model' = {data} x {model} needs more than the {n} available devices"
        )
    devices = devices[: data * model]  # an explicit smaller mesh uses the first devices
    grid = np.asarray(devices).reshape(data, model)
    return Mesh(grid, ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))


def _spec_for(path: str, rules: Rules) -> P:
    for pattern, spec in rules:
        if re.search(pattern, path):
            return spec
    return P()


def tree_shardings(tree, rules: Rules, mesh: Mesh):
    """``NamedSharding`` for every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``s) by path rules.

    A rule whose spec has more axes than the leaf (e.g. a scalar optimizer count) is ignored for it,
    and a dimension that does not divide its mesh axis stays replicated (e.g. 9 heads on 8 devices).
    """

    def leaf_sharding(path, leaf):
        shape = getattr(leaf, "shape", ())
        spec = _spec_for(jax.tree_util.keystr(path), rules)
        if len(spec) > len(shape):
            return NamedSharding(mesh, P())
        axes = [axis if axis is None or shape[dim] % mesh.shape[axis] == 0 else None for dim, axis in enumerate(spec)]
        return NamedSharding(mesh, P(*axes))

    return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Activation batches ``[tokens, d]``: rows split over 'data', features replicated."""
    return NamedSharding(mesh, P("data", None))
