"""A tiny VQ tokenizer whose codebook has a known structure, and maps over it.

The codebook: 8 random unit directions, each present twice (rows 2i and 2i+1, the second nudged by
1e-3), so the right clustering is known: the pairs. Replacing a token by its pair's other member
barely changes the decoded image; a random map swaps it for an unrelated row.
"""

import numpy as np
import pytest
import torch

# 16x16 input, downsample 4 (a 4x4 grid of 16 tokens), 16 codes of dimension 4; untrained weights
TINY_VQ = dict(
    image_size=16, block_out_channels=(8, 8, 8), latent_channels=8, norm_num_groups=4, num_embeddings=16, embed_dim=4, seed=0
)


def paired_vqmodel(seed=0):
    from masc_hf.training.vq_trainer import VQTrainingConfig, build_vqmodel

    vqmodel = build_vqmodel(VQTrainingConfig(**TINY_VQ)).eval()
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.normalize(torch.randn(8, 4, generator=generator), dim=1)
    nudge = 1e-3 * torch.randn(16, 4, generator=generator) * (torch.arange(16) % 2)[:, None]
    with torch.no_grad():
        vqmodel.quantize.embedding.weight.copy_(base.repeat_interleave(2, dim=0) + nudge)
    return vqmodel


@pytest.fixture(scope="session")
def paired_vq():
    return paired_vqmodel()


@pytest.fixture(scope="session")
def paired_maps(paired_vq):
    """``{"pairs": the right map (masc finds it), "random": a random map, "singletons": k = N}``."""
    from masc_hf import build_cluster_map
    from masc_hf.vq import export_codebook

    codebook = export_codebook(paired_vq)
    pairs = build_cluster_map(codebook, 8, compute_quality=False)
    assert pairs.mapping.tolist() == [i // 2 for i in range(16)]
    return {
        "pairs": pairs,
        "random": build_cluster_map(codebook, 8, method="random", seed=0, compute_quality=False),
        "singletons": build_cluster_map(codebook, 16, compute_quality=False),
    }


@pytest.fixture(scope="session")
def small_images():
    """uint8 [40, 12, 12] noise: padded to the 16x16 input as Fashion-MNIST 28x28 is to 32x32."""
    return np.random.default_rng(0).integers(0, 256, size=(40, 12, 12), dtype=np.uint8)
