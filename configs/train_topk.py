"""The former name of ``configs/train.py`` (which trains every architecture), kept so that commands
written with ``--config configs/train_topk.py`` keep working: the same ``get_config``."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("jaxinterp_config_train", Path(__file__).with_name("train.py"))
_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train)
get_config = _train.get_config
