#!/usr/bin/env bash
# The CUDA checks of the speed issue, as one script for a lent GPU machine (the whole run stays under
# 8 minutes): the cluster map's torch engine on CUDA against scipy, generation (bf16, the decode step
# compiled with CUDA graphs) for GPT-B/L/XL at batch 64 against the LlamaGen reference, the random-member
# and refiner shares of generation time, and a training step (bf16 autocast, fused AdamW, flash SDPA)
# against the reference, each against its baseline in the same run. Prints one table at the end and
# writes every log under ${RESULTS:-results/gpu}. A generation check cut by its time limit (SIGTERM) still prints the figures
# of the rounds it finished (exit 124 in the console); 15 s later, a check still running is killed.
#
#   bash benchmarks/gpu_check.sh                                   # from the repository root
#   LLAMAGEN_SRC=/path/to/LlamaGen bash benchmarks/gpu_check.sh    # the reference checkout (default: .ref/llamagen if present)
#   ONLY="generate_GPT-B-256 train_GPT-B-256" bash benchmarks/gpu_check.sh   # rerun some checks
#
# A dry run without a GPU: DEVICE=cpu PRESETS=tiny BATCH=4 DTYPE=float32 MAP_N=2048 WHEELS=none RESULTS=/tmp/dry bash benchmarks/gpu_check.sh
# Before a GPU run, with that machine's torch and no GPU: python benchmarks/cuda_compile_check.py --preset GPT-XL-256
# compiles every compiled generate of this script for sm_90 (inductor + Triton, CUDA graphs on).
#
# Offline machines: wheels of missing packages (diffusers, fastcluster) placed in .whl/ are installed
# under /tmp first; without an installed masc_hf, src/ goes on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-results/gpu}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/masc-site "$WHEELS"/*.whl >"$RESULTS/install.log" 2>&1 \
    || { echo "wheel install failed: $RESULTS/install.log"; exit 1; }
  export PYTHONPATH=/tmp/masc-site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" -c "import masc_hf" 2>/dev/null || export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}   # DEVICE=cpu with PRESETS=tiny: a dry run of this script on a machine without a GPU
if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), 'torch', torch.__version__)" \
    | tee "$RESULTS/device.txt" || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$RESULTS/device.txt" 2>&1
fi
LLAMAGEN_SRC=${LLAMAGEN_SRC:-$([ -d .ref/llamagen ] && echo .ref/llamagen)}
REF=()
[ -n "${LLAMAGEN_SRC:-}" ] && REF=(--reference-src "$LLAMAGEN_SRC")
PRESETS=${PRESETS:-GPT-B-256 GPT-L-256 GPT-XL-256}
BATCH=${BATCH:-64}
DTYPE=${DTYPE:-bfloat16}
ONLY=${ONLY:-}

DEADLINE=${DEADLINE:-470}  # seconds: a check that would end later gets the time left, none under 30 s

run() {  # name, timeout in seconds, command...
  local name=$1 limit=$2; shift 2
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
  local left=$((DEADLINE - SECONDS))
  if [ $left -lt 30 ]; then echo "== $name: skipped, ${left} s left of DEADLINE=${DEADLINE}"; return; fi
  [ $left -lt "$limit" ] && limit=$left
  echo "== $name ($(date +%T), at most ${limit} s)"
  local start=$SECONDS
  timeout -k 15 "$limit" "$@" >"$RESULTS/$name.txt" 2>"$RESULTS/$name.err"
  local code=$?
  echo "   exit $code after $((SECONDS - start)) s: $(tail -n 1 "$RESULTS/$name.txt")"
  [ $code -ne 0 ] && tail -n 5 "$RESULTS/$name.err" | sed 's/^/   ! /'
}

# Order: most wanted first, so a run cut by DEADLINE loses the least.
first_preset=${PRESETS%% *}
gen() {  # preset, timeout, extra options...
  local preset=$1 limit=$2; shift 2
  run "generate_$preset" "$limit" "$PY" benchmarks/bench_generate.py --preset "$preset" --batch-size "$BATCH" --device "$DEVICE" \
    --dtype "$DTYPE" --guidance-scale 4.0 --no-baseline --repeats 2 "${REF[@]}" "$@"
}
# 0. correctness on the device: map engines, CUDA-graph decode, the reference's greedy tokens
run cuda_parity 150 "$PY" benchmarks/cuda_parity.py --device "$DEVICE" "${REF[@]}"
# 1. maps: the torch engine on the GPU, scipy and fastcluster on the host, same codebook, same partition
MAP_N=${MAP_N:-16384}
run cluster_map 60 "$PY" benchmarks/bench_cluster_map.py --n "$MAP_N" --d 8 --k $((MAP_N / 2)) --engine torch --device "$DEVICE"
# 2. generation: eager and compiled (CUDA graphs) against the reference's generate, batch 64, CFG 4
gen "$first_preset" 150 --cache-windows 4   # also the compiled step with 4 static attention lengths
# 3. a training step: fp32 weights under bf16 autocast, fused AdamW; eager and compiled against the reference
run "train_$first_preset" 120 "$PY" benchmarks/bench_train.py --preset "$first_preset" --batch-size 32 --autocast bfloat16 --device "$DEVICE" \
  --steps 6 --warmup 2 --compile "${REF[@]}"
for preset in ${PRESETS#"$first_preset"}; do
  gen "$preset" 150
done
# 4. the decode's shares: a random member per cluster id, and hierarchical decoding by the refiner
run "refiner_$first_preset" 150 "$PY" benchmarks/bench_generate.py --preset "$first_preset" --batch-size "$BATCH" --device "$DEVICE" \
  --dtype "$DTYPE" --guidance-scale 4.0 --no-baseline --repeats 3 --refiner

{
  echo "| check | result |"
  echo "|---|---|"
  for f in "$RESULTS"/*.txt; do
    [ "$(basename "$f")" = device.txt ] && continue
    line=$(grep -h "^batch [0-9]*:" "$f" | tail -n 1)
    echo "| $(basename "$f" .txt) | ${line:-$(tail -n 1 "$f")} |"
  done
  if grep -qh "^table row:" "$RESULTS"/generate_*.txt 2>/dev/null; then
    echo
    echo "| model | params | batch | dtype | LlamaGen reference, s/batch | ours, s/batch | speed-up |"
    echo "|---|---|---|---|---|---|---|"
    grep -h "^table row:" "$RESULTS"/generate_*.txt | sed 's/^table row: //'
  fi
} | tee "$RESULTS/summary.md"
