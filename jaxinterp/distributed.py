"""One code path for 1 and N processes: ``jax.distributed`` from config or environment.

Every verb's config has a ``distributed`` section (``schemas.distributed_config()``). Left at its
defaults, the process layout comes from the environment, in this order:

1. ``JAXINTERP_COORDINATOR`` / ``JAXINTERP_NUM_PROCESSES`` / ``JAXINTERP_PROCESS_ID`` (set by
   ``launch/local.py``, or by hand);
2. a cluster JAX detects by itself (``jax.distributed.initialize()`` with no arguments): an srun
   step of more than one task, ``JAX_COORDINATOR_ADDRESS``, or, when ``JAXINTERP_DISTRIBUTED=auto``
   (``launch/tpu_pod.sh`` sets it), whatever JAX finds, e.g. a Cloud TPU pod slice;
3. otherwise one process, and nothing is initialised.

Explicit ``distributed.coordinator`` / ``num_processes`` / ``process_id`` override all of that.
With several processes on CPU, the cross-process collectives run over gloo.

Example::

    initialize({"coordinator": "10.0.0.1:1234", "num_processes": 2, "process_id": 0, "timeout_s": 300})
    barrier("store-written", timeout_s=300)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxinterp.config import ConfigError

__all__ = ["initialize", "barrier", "is_primary", "host_copy"]

_ENV = ("JAXINTERP_COORDINATOR", "JAXINTERP_NUM_PROCESSES", "JAXINTERP_PROCESS_ID")


def _cluster_detected() -> bool:
    """Whether JAX's own auto-detection would find a multi-process job here."""
    env = os.environ
    # Set by srun for the tasks of a job step (not in the batch script itself, which is one process).
    slurm_tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    tpu_workers = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return (slurm_tasks > 1 or len(tpu_workers) > 1 or bool(env.get("JAX_COORDINATOR_ADDRESS"))
            or env.get("JAXINTERP_DISTRIBUTED") == "auto")


def _explicit(cfg: Mapping[str, Any]) -> tuple[str, int, int] | None:
    """(coordinator, num_processes, process_id) from the config, else the JAXINTERP_* variables."""
    coordinator = cfg.get("coordinator", "") or os.environ.get(_ENV[0], "")
    count = cfg.get("num_processes", -1)
    count = int(os.environ.get(_ENV[1], "-1")) if count == -1 else count
    index = cfg.get("process_id", -1)
    index = int(os.environ.get(_ENV[2], "-1")) if index == -1 else index
    if not coordinator and count in (-1, 1):
        return None
    if not coordinator or count < 1 or not 0 <= index < count:
        raise ConfigError(
            "config fields 'distributed.coordinator', 'distributed.num_processes' and 'distributed.process_id' "
            f"(or ${', $'.join(_ENV)}) must be given together, with 0 <= process_id < num_processes; got "
            f"{coordinator!r}, {count}, {index}")
    return coordinator, count, index


def initialize(cfg: Mapping[str, Any] | None = None) -> int:
    """Joins the multi-process job the config or environment describes; returns the process count.

    Idempotent: a second call (e.g. the demo's stages) does nothing. A job whose other processes
    never arrive fails after ``timeout_s`` with JAX's error instead of hanging.
    """
    cfg = cfg or {}
    if jax.distributed.is_initialized():
        return jax.process_count()
    explicit = _explicit(cfg)
    if explicit is None and not _cluster_detected():
        return 1
    # Cross-process collectives between CPU devices need gloo; harmless on GPU/TPU hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeout = int(cfg.get("timeout_s", 300))
    if explicit is None:
        jax.distributed.initialize(initialization_timeout=timeout)
    else:
        coordinator, count, index = explicit
        jax.distributed.initialize(coordinator, num_processes=count, process_id=index,
                                   initialization_timeout=timeout)
    return jax.process_count()


def barrier(name: str, timeout_s: float = 300.0) -> None:
    """Waits until every process reaches the barrier ``name``; a no-op with one process.

    Raises ``TimeoutError`` naming the barrier when some process does not arrive in time (it
    crashed, or is stuck), instead of hanging forever.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the coordination-service client; JAX has no public barrier with a timeout

    try:
        distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))
    except Exception as error:  # the client raises XlaRuntimeError (DEADLINE_EXCEEDED, or a peer's failure)
        raise TimeoutError(f"process {jax.process_index()} of {jax.process_count()}: not every process reached "
                           f"barrier {name!r} within {timeout_s:g} s ({error})") from error


def is_primary() -> bool:
    """Whether this process writes the job's shared files (manifests, cfg.json, exports): process 0."""
    return jax.process_index() == 0


def host_copy(tree: Any) -> Any:
    """A pytree this process can compute with on its own: itself with one process; with several,
    numpy copies of its (possibly multi-process sharded) arrays, identical on every process.

    Every process must call it (it is a collective when arrays span processes).
    """
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
