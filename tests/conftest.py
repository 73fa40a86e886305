import os

import pyro
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)  # tiny nets: one thread is faster, and robust on a loaded 2-core machine


@pytest.fixture(autouse=True)
def _fresh_pyro():
    """Tests run with Pyro's validation on and an empty param store."""
    pyro.clear_param_store()
    with pyro.validation_enabled(True):
        yield
