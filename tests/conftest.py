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


@pytest.fixture(scope="session")
def tiny_dual_vq():
    """``tiny_dual_vq(semantic=16, detail=32, seed=0)``: a random 2-level DualCodebookVQModel (4x downsampling
    stops at 2x here: 8 px images, a 4x4 grid) for pipeline and training tests."""
    import torch

    from masc_hf import DualCodebookVQModel

    def make(semantic: int = 16, detail: int = 32, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return DualCodebookVQModel(
                block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, latent_channels=16,
                num_semantic_embeddings=semantic, num_detail_embeddings=detail, vq_embed_dim=8, sample_size=8,
            ).eval()

    return make
