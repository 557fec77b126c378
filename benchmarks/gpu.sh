#!/usr/bin/env bash
# One GPU for at most 9 minutes: data-path throughput at batch 24 (reference-style vs fast, with autocast and
# channels-last), then as much of BCP's ACDC paper protocol as the measured speed fits in the time left, with
# its test Dice. See medsemi/bench/gpu.py; paths are relative to the repository root.
#
#   benchmarks/gpu.sh --out runs/bench/gpu          # cuda, 540 s; writes summary.md, summary.csv, throughput/, bcp/
#   benchmarks/gpu.sh --device cpu --budget-s 60 --max-iterations 2 --test-limit 1 ...   # smoke (tests/bench/test_gpu.py)
#
# Where only a few files may come back (the device tool: 8 files, 2 folders down), copy the text results:
#   benchmarks/gpu.sh --out runs/bench/gpu; cp runs/bench/gpu/summary.* runs/bench/gpu/throughput/throughput.* \
#       runs/bench/gpu/bcp/leaderboard.md runs/bench/gpu/bcp/runs.csv "$OUT"/
# PYTHON picks the interpreter (default: .venv/bin/python where it exists, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m medsemi.bench.gpu "$@"
