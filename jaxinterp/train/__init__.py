"""SAE training: the SAEs of a run, state, the jitted step, checkpoints, and the loop.

Reading a finished run back (its config, its trained SAEs) is :mod:`jaxinterp.runs`, which this
package builds on and which imports nothing of it.
"""

from jaxinterp.runs import CheckpointError  # train raises it too (a run whose verified steps are all damaged)
from jaxinterp.train.checkpoint import RunExistsError
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
    "init_state",
    "learning_rate",
    "make_optimizer",
    "member_configs",
    "run_config",
    "sae_step",
    "train",
    "train_step",
]
