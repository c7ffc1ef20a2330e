#!/usr/bin/env bash
# Regenerate benchmarks/results/bench_zoo.{md,json,png} with the int8 (dynamic, static QDQ) and fp16 variants of
# every zoo model next to fp32 and PyTorch eager (batch 1 and 32, threads 1 and 2, one process per configuration).
#   usage: benchmarks/bench_zoo_variants.sh [ZOO_DIR]   (default: build/demo from `make demo`)
set -euo pipefail
cd "$(dirname "$0")/.."
ZOO_DIR=${1:-build/demo}
[ $# -gt 0 ] && shift
OUT=build/zoo-variants
mkdir -p "$OUT"
variants=()
for m in mlp cnn lstm transformer; do
  for mode in dynamic static fp16; do
    target="$OUT/$m.$mode.onnx"
    # accuracy gate on (default 1.0 point); speed is measured by the benchmark below, not twice
    .venv/bin/edgedl quantize "$ZOO_DIR/$m.onnx" --mode "$mode" -o "$target" --speed-seconds 0 --no-progress >/dev/null
    variants+=("$target")
  done
done
.venv/bin/python benchmarks/bench_zoo.py "$ZOO_DIR" "${variants[@]}" "$@"
