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
