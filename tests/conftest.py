import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One thread per test process: tiny models gain nothing from a second thread, and under pytest-xdist
# (or a busy 2-core machine) two threads per worker oversubscribe the cores badly.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The LlamaGen golden fixtures live in ../shared beside the checkout (CI clones with it beside).
FIXTURES = Path(os.environ.get("MASC_HF_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures" / "llamagen"))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine (or under xdist)
    OpenMP threads waiting for each other make them tens of times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def llamagen_fixtures() -> Path:
    if not (FIXTURES / "README.md").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"LlamaGen fixtures not found at {FIXTURES}; set MASC_HF_FIXTURES")
        pytest.skip(f"LlamaGen fixtures not found at {FIXTURES}; set MASC_HF_FIXTURES")
    return FIXTURES


IAR2_FIXTURES = Path(os.environ.get("MASC_HF_IAR2_FIXTURES", FIXTURES.parent / "iar2"))


@pytest.fixture(scope="session")
def iar2_fixtures() -> Path:
    """The IAR2 golden fixtures (dual-codebook tokenizer, AR model) in ../shared/fixtures/iar2."""
    if not (IAR2_FIXTURES / "README.md").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"IAR2 fixtures not found at {IAR2_FIXTURES}; set MASC_HF_IAR2_FIXTURES")
        pytest.skip(f"IAR2 fixtures not found at {IAR2_FIXTURES}; set MASC_HF_IAR2_FIXTURES")
    return IAR2_FIXTURES
