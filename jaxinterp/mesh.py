"""Device meshes and sharding written as data.

Model code never names devices. Dictionaries name *logical* axes of their arrays (``latent``, from
each architecture's spec); :data:`LOGICAL_RULES` maps them to the mesh axes ``('data', 'model')``
(:func:`logical_sharding`). Source models use path rules instead: a ``(regex, PartitionSpec)``
table over the path of every leaf (:func:`tree_shardings`), first match wins, unmatched leaves
replicated.

Example::

    mesh = make_mesh(data=-1, model=1)
    W_enc_sharding = logical_sharding((None, "latent"), (576, 9216), mesh)
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxinterp.config import ConfigError

__all__ = ["make_mesh", "tree_shardings", "batch_sharding", "logical_sharding", "Rules", "LOGICAL_RULES"]

Rules = Sequence[tuple[str, P]]

# Logical axis → mesh axis: latents on 'model' (every other axis replicated).
LOGICAL_RULES: Mapping[str, str] = {"latent": "model"}


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


def logical_sharding(axes: Sequence[str | None] | None, shape: Sequence[int], mesh: Mesh,
                     rules: Mapping[str, str] = LOGICAL_RULES) -> NamedSharding:
    """The ``NamedSharding`` of an array of ``shape`` whose dimensions have logical ``axes``.

    ``None`` axes (or ``axes=None``) are replicated, as is a dimension that does not divide its
    mesh axis (as :func:`tree_shardings`); axes of another rank than ``shape`` replicate the array.
    """
    if axes is None or len(axes) != len(shape):
        return NamedSharding(mesh, P())
    mesh_axes = [rules.get(axis) if axis is not None else None for axis in axes]
    return NamedSharding(mesh, P(*[axis if axis is None or shape[dim] % mesh.shape[axis] == 0 else None
                                   for dim, axis in enumerate(mesh_axes)]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Activation batches ``[tokens, d]``: rows split over 'data', features replicated."""
    return NamedSharding(mesh, P("data", None))
