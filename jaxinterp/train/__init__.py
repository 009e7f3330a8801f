"""SAE training: the SAEs of a run, state, the jitted step, checkpoints, and the loop."""

from jaxinterp.train.checkpoint import CheckpointError, RunExistsError, checkpoint_manager, read_run_config
from jaxinterp.train.loop import run_config, train
from jaxinterp.train.members import Member, build_members, learning_rate, make_optimizer, member_configs
from jaxinterp.train.run_lock import RunLockedError
from jaxinterp.train.state import SAEState, TrainState, abstract_state, init_state
from jaxinterp.train.step import sae_step, train_step

__all__ = [
    "CheckpointError",
    "Member",
    "RunExistsError",
    "RunLockedError",
    "SAEState",
    "TrainState",
    "abstract_state",
    "build_members",
    "checkpoint_manager",
    "init_state",
    "learning_rate",
    "make_optimizer",
    "member_configs",
    "read_run_config",
    "run_config",
    "sae_step",
    "train",
    "train_step",
]
