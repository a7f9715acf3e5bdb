"""kill -9 at any moment during a save leaves the target either as it was or complete: never half-written.

A child process saves to the same target in a loop (each save replaces the last); it is killed at a
random moment, several times; after each kill the target must load whole (or not exist yet).
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

SAVERS = {
    "cluster map": """
        import numpy as np, masc_hf
        cmap = masc_hf.build_cluster_map(np.random.default_rng(0).normal(size=(512, 8)), 64, compute_quality=False)
        print("ready", flush=True)
        while True:
            cmap.save_pretrained(TARGET)
    """,
    "converted LlamaGen": """
        import json
        from masc_hf.models.llamagen.configuration_llamagen import LlamaGenConfig
        from masc_hf.models.llamagen.convert_llamagen import convert_llamagen_checkpoint
        config = LlamaGenConfig.from_model_args(json.loads((FIXTURES / "gpt" / "config.json").read_text()))
        print("ready", flush=True)
        while True:
            convert_llamagen_checkpoint(FIXTURES / "gpt" / "model.safetensors", TARGET, config, overwrite=True)
    """,
    "pipeline": """
        import json, torch
        from diffusers import VQModel
        from masc_hf.models.llamagen.configuration_llamagen import LlamaGenConfig
        from masc_hf.models.llamagen.convert_llamagen import convert_llamagen_checkpoint
        from masc_hf.models import LlamaGenForImageGeneration
        from masc_hf.pipelines import MASCPipeline
        from masc_hf.vq.convert_llamagen import convert_llamagen_vq
        from pathlib import Path
        parts = Path(str(TARGET) + "-parts")
        if not (parts / "vq").is_dir():
            convert_llamagen_vq(FIXTURES / "vq" / "model.safetensors", parts / "vq", config=FIXTURES / "vq" / "config.json")
            config = LlamaGenConfig.from_model_args(json.loads((FIXTURES / "gpt" / "config.json").read_text()))
            convert_llamagen_checkpoint(FIXTURES / "gpt" / "model.safetensors", parts / "gpt", config)
        pipe = MASCPipeline(transformer=LlamaGenForImageGeneration.from_pretrained(parts / "gpt"), vqvae=VQModel.from_pretrained(parts / "vq"))
        print("ready", flush=True)
        while True:
            pipe.save_pretrained(TARGET)
    """,
}


def load(kind, target):
    if kind == "cluster map":
        from masc_hf import MASCClusterMap

        return MASCClusterMap.from_pretrained(target).num_clusters == 64
    if kind == "converted LlamaGen":
        from masc_hf.models import LlamaGenForImageGeneration

        return LlamaGenForImageGeneration.from_pretrained(target).config.vocab_size == 256
    from masc_hf.pipelines import MASCPipeline

    return MASCPipeline.from_pretrained(target).transformer.config.vocab_size == 256


@pytest.mark.parametrize("kind", sorted(SAVERS))
def test_kill_9_during_saves_never_leaves_a_half_written_target(kind, tmp_path, llamagen_fixtures):
    target = tmp_path / "out"
    code = f"from pathlib import Path\nTARGET = Path({str(target)!r})\nFIXTURES = Path({str(llamagen_fixtures)!r})\n" + textwrap.dedent(SAVERS[kind])
    rng = np.random.default_rng(0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()[-2000:]
        time.sleep(float(rng.uniform(0.05, 0.6)))  # somewhere inside one of the saves
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if target.exists():
            assert load(kind, target), f"{kind}: the target does not load after kill -9 (attempt {attempt})"
    assert target.exists()  # at least one save completed over the attempts
