"""SAE training: state, optimizer, the jitted step, checkpoints, and the loop."""

from jaxinterp.train.checkpoint import RunExistsError, checkpoint_manager, read_run_config
from jaxinterp.train.loop import run_config, train
from jaxinterp.train.state import TrainState, init_state, learning_rate, make_optimizer
from jaxinterp.train.step import train_step

__all__ = [
    "RunExistsError",
    "TrainState",
    "checkpoint_manager",
    "init_state",
    "learning_rate",
    "make_optimizer",
    "read_run_config",
    "run_config",
    "train",
    "train_step",
]
