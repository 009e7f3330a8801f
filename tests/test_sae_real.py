"""Every SAE architecture trains on real SmolLM2-135M activations, all six in one sweep run
(the session fixture ``smollm2_sweep`` in conftest, shared with the export and eval tests)."""

import pytest

from tests.conftest import SMOLLM2_SWEEP

pytestmark = pytest.mark.real_model


def test_every_architecture_trains_on_smollm2_activations(smollm2_sweep):
    _, summary = smollm2_sweep
    print({name: {k: round(v, 4) for k, v in e.items() if isinstance(v, float)} for name, e in summary["eval"].items()})
    for name, (_, max_fvu, max_l0, max_dead) in SMOLLM2_SWEEP.items():
        result = summary["eval"][name]
        assert result["fvu"] < max_fvu and result["l0"] <= max_l0 and result["dead_fraction"] < max_dead, (name, result)
