"""The benchmark scripts run and print the figures the README and the speed issue quote (tiny models,
CPU; the scripts' timings are not checked here: speed goals are ratios the scripts print)."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(*args: str) -> str:
    result = subprocess.run([sys.executable, str(BENCHMARKS / args[0]), *args[1:]], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_generation_benchmark_prints_the_floors_and_the_decode_shares():
    out = run_script("bench_generate.py", "--batch-size", "2", "--threads", "2", "--no-compile", "--no-baseline", "--repeats", "1", "--floor")
    assert re.search(r"time / linear-layer floor: \d+\.\d\dx \(goal <= 1\.25x\); time / \(linear layers \+ KV cache reads\): \d+\.\d\dx", out)
    assert re.search(r"time / packed linear layers: \d+\.\d\dx; time / \(packed linear layers \+ KV cache reads\): \d+\.\d\dx", out)
    out = run_script("bench_generate.py", "--batch-size", "2", "--threads", "2", "--no-compile", "--no-baseline", "--repeats", "1",
                     "--refiner", "--refiner-width", "64", "--refiner-clusters", "4096")
    shares = re.search(r"eager: random-member decode (\d+\.\d\d)% of generation time \(goal < 1%\), refiner (\d+\.\d)% \(goal < 10%\)", out)
    assert shares and 0 <= float(shares[1]) < 100 and 0 < float(shares[2]) < 100, out


def test_the_refiners_share_is_the_median_of_paired_rounds():
    """With several rounds the refiner's share is read from each round's pair of runs (cluster ids, then
    hierarchical) and printed as their median, with the range over the rounds around it."""
    out = run_script("bench_generate.py", "--batch-size", "2", "--threads", "2", "--no-compile", "--no-baseline", "--repeats", "3",
                     "--refiner", "--refiner-width", "64", "--refiner-clusters", "4096")
    shares = re.search(r"refiner (-?\d+\.\d)% \(goal < 10%\) \(median of 3 paired rounds, (-?\d+\.\d)% to (-?\d+\.\d)%\)", out)
    assert shares, out
    median, low, high = (float(x) for x in shares.groups())
    assert low - 0.05 <= median <= high + 0.05 and high > 0, out


def test_a_stopped_generation_benchmark_prints_what_it_measured():
    """SIGTERM (gpu_check.sh's time limit) stops the rounds; the figures of the runs done are printed."""
    process = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / "bench_generate.py"), "--batch-size", "2", "--threads", "2", "--no-compile", "--no-baseline",
         "--repeats", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in process.stderr:  # the first round is timed: stop the benchmark there
            if line.startswith("round 1 of 1000 timed"):
                process.send_signal(signal.SIGTERM)
                break
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    assert re.search(r"stopped by SIGTERM: the figures below come from \d+ round\(s\)", out), out
    assert re.search(r"^static cache, eager\s+\d+\.\d\d\s+\d+\s+\d+\.\d{3}", out, re.M), out


def test_the_draw_benchmark_times_both_draws_per_batch():
    out = run_script("bench_draw.py", "--vocab", "512", "--batch-sizes", "2", "5", "--steps", "20", "--repeats", "1")
    rows = re.findall(r"^\s+(\d+)\s+(\d+\.\d{3})\s+(\d+\.\d{3})\s+(\d+\.\d)x$", out, flags=re.M)
    assert [int(row[0]) for row in rows] == [2, 5], out
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows), out
    result = subprocess.run([sys.executable, str(BENCHMARKS / "bench_draw.py"), "--members", "600", "--vocab", "512"], capture_output=True, text=True)
    assert result.returncode == 2 and "--members 600 must lie in 1..--vocab (512)" in result.stderr


def test_training_benchmark_runs_ours_under_autocast():
    out = run_script("bench_train.py", "--preset", "tiny", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--autocast", "bfloat16")
    assert "float32 weights, bfloat16 autocast" in out
    assert re.search(r"ours\s+\d+\.\d+ s/step .* tokens/s", out)


def test_the_decode_step_compiles_for_cuda_without_a_gpu():
    """cuda_compile_check.py: generate(compile=True)'s steps through inductor's CUDA code generation and
    Triton's compiler on fake CUDA tensors, with CUDA graphs; skipped where torch cannot fake the device."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "cuda_compile_check.py"), "--preset", "tiny", "--batch-size", "4", "--only", "sampled,top-p,refiner"],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode == 3:
        pytest.skip(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert re.findall(r"^ok    (\S+): 1 graph with CUDA graphs", result.stdout, re.M) == ["sampled", "top-p", "refiner"]
    assert result.stdout.strip().endswith("3 of 3 configurations compile for CUDA")


def test_the_cuda_compile_check_fails_a_step_with_host_work(monkeypatch):
    """A decode step that samples on the host would run as CUDA graphs split around it: the check says so."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import cuda_compile_check as check
    finally:
        sys.path.remove(str(BENCHMARKS))
    from masc_hf.models.llamagen import modeling_llamagen

    sample = modeling_llamagen.sample_next_token
    monkeypatch.setattr(modeling_llamagen, "sample_next_token", lambda logits, *args: sample(logits.cpu(), *args).to(logits.device))
    try:
        with check.FakeCuda():
            check.check_the_fake()
            with pytest.raises(Exception) as failure:  # dynamo wraps what its backend raised
                check.check_configuration("greedy", "tiny", 4, torch.bfloat16)
    except check.CannotCheck as error:
        pytest.skip(str(error))
    finally:
        torch._dynamo.reset()
    assert re.fullmatch(r"AssertionError: the step computes on the host \(cpu, .*\): CUDA graphs would be split around it", check.innermost_error(failure.value))
