"""Loading a trained SAE back from a run directory (for export and evaluation)."""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxinterp.train.checkpoint import read_run_config, restore_latest
from jaxinterp.train.state import TrainState, init_state, make_optimizer

__all__ = ["TrainedSAE", "load_trained"]


class TrainedSAE(NamedTuple):
    """A run's ``cfg.json``, its newest step, that step's state (on one local device), and the
    factor the buffer multiplied inputs by (1.0 unless the run normalised activations)."""

    config: dict[str, Any]
    step: int
    state: TrainState
    input_scale: float


def load_trained(run_dir: str) -> TrainedSAE:
    """Restores the newest checkpoint of a run onto the first local device."""
    config = read_run_config(run_dir)
    init = partial(init_state, d_in=config["d_in"], d_sae=config["d_sae"], optimizer=make_optimizer(config["train"]))
    abstract = jax.eval_shape(init, jax.random.key(0), np.zeros(config["d_in"], np.float32))
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract)
    step, restored, buffer_state = restore_latest(run_dir, target)
    return TrainedSAE(config, step, TrainState(*restored), buffer_state.scales[config["hook_name"]])
