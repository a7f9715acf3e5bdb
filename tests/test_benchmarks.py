"""The benchmark scripts run and print the figures the README and the speed issue quote (tiny models,
CPU; the scripts' timings are not checked here: speed goals are ratios the scripts print)."""

import re
import subprocess
import sys
from pathlib import Path

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


def test_training_benchmark_runs_ours_under_autocast():
    out = run_script("bench_train.py", "--preset", "tiny", "--batch-size", "2", "--steps", "1", "--warmup", "0", "--autocast", "bfloat16")
    assert "float32 weights, bfloat16 autocast" in out
    assert re.search(r"ours\s+\d+\.\d+ s/step .* tokens/s", out)
