import os

import pytest

# Quiet progress bars and keep torch to the 2 cores CI has.
os.environ.setdefault("DDBENCH_QUIET", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root():
    from pathlib import Path

    return Path(REPO)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Test tensors are tiny: one thread is fastest, and on a busy 2-core machine two OpenMP
    threads waiting on each other made steps up to 10x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
