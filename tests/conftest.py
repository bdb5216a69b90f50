import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ICAM_SHARED", ROOT.parent / "shared"))

# The CI box has 2 cores; keep intra-op threads low so parallel workers don't thrash.
torch.set_num_threads(int(os.environ.get("ICAM_TEST_THREADS", "2")))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module whose tests run many tiny networks in-process."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (fixtures, reference keys, real VOC samples); skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared folder {SHARED} not present")
    return SHARED


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
