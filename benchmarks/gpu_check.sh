#!/usr/bin/env bash
# The CUDA checks of the speed issue, as one script for a lent GPU machine (keep the whole run under
# 8 minutes): the cluster-map engines, generation (bf16, compiled decode step with CUDA graphs, GPT-B/L/XL
# at batch 64) and a training step, each against its baseline in the same run. Prints one table at the end
# and writes everything under ${OUT:-results/gpu}.
#
#   bash benchmarks/gpu_check.sh                       # from the repository root on the GPU machine
#   LLAMAGEN_SRC=/path/to/LlamaGen bash benchmarks/gpu_check.sh   # also time the LlamaGen reference
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if ! "$PY" -c "import masc_hf" 2>/dev/null; then
  "$PY" -m pip install --quiet -e . >"$OUT/install.log" 2>&1 || { echo "install failed: $OUT/install.log"; exit 1; }
fi
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)" | tee "$OUT/device.txt" || exit 1
REF=()
[ -n "${LLAMAGEN_SRC:-}" ] && REF=(--reference-src "$LLAMAGEN_SRC")

run() {  # name, timeout in seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"
  echo "   exit $? -> $OUT/$name.txt: $(tail -n 1 "$OUT/$name.txt")"
}

run cluster_map 90 "$PY" benchmarks/bench_cluster_map.py --n 16384 --d 8 --k 8192
for preset in GPT-B-256 GPT-L-256 GPT-XL-256; do
  run "generate_$preset" 120 "$PY" benchmarks/bench_generate.py --preset "$preset" --batch-size 64 --device cuda --dtype bfloat16 \
    --guidance-scale 4.0 --no-baseline --repeats 2 "${REF[@]}"
done
run train_GPT-B-256 120 "$PY" benchmarks/bench_train.py --preset GPT-B-256 --batch-size 32 --dtype bfloat16 --device cuda --compile "${REF[@]}"

echo
echo "| check | result |"
echo "|---|---|"
for f in "$OUT"/*.txt; do
  [ "$(basename "$f")" = device.txt ] && continue
  echo "| $(basename "$f" .txt) | $(tail -n 1 "$f") |"
done | tee "$OUT/summary.md"
