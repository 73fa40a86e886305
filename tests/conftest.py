import os

import pyro
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Tests run with Pyro's validation on and an empty param store."""
    pyro.clear_param_store()
    with pyro.validation_enabled(True):
        yield
