#!/usr/bin/env bash
# The GPU path in one run, from the repository root, on a machine without network:
#   (a) the CUDA-marked tests (torch exact and IVF-PQ on the GPU against faiss, and the
#       equivalence guarantee there), then
#   (b) bench/gpu_speed.py: kNN-LM scoring throughput against parametric at 50M synthetic
#       entries with a randomly initialised `base` LM in bf16 (torch exact search, torch
#       IVF-PQ with and without an opt-out filter, faiss-gpu IVF-PQ where installed),
#   (c) results in "${OUT:-bench/out}/gpu.json" (the test outcome included), logs beside it.
# Budget: 8 minutes in all (tests <= 150 s, benchmark <= 300 s, both hard timeouts).
#
#     bash bench/gpu.sh                       # on the GPU machine
#     SILO_GPU_ENTRIES=20000 SILO_GPU_PRESET=tiny SILO_GPU_NLIST=64 SILO_GPU_M=8 \
#       SILO_GPU_BATCH=2 SILO_GPU_SEQ=64 SILO_GPU_TRAIN_SIZE=8192 bash bench/gpu.sh   # CPU dry run
#
# Sizes come from SILO_GPU_<ARGUMENT> variables or from arguments passed through to
# bench/gpu_speed.py (see its --help). PYTHON picks the interpreter (default python3).
#
# What must travel with the tree: the GPU image has torch, transformers, numpy, pytest and
# tqdm but no faiss. The benchmark needs none; the tests compare against faiss and need
# it. Put the faiss-cpu wheel for its Python (3.12, x86-64; 18.8 MB) in .whl/ (never
# committed; add `/.whl/` to .git/info/exclude) and carry .whl; this script installs it
# into /tmp/site when faiss is missing:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 -d .whl faiss-cpu==1.15.1
# A faiss-gpu wheel there instead also adds the faiss-gpu case to the benchmark.
# bench/out/ is not git-ignored: set OUT, or add it to .git/info/exclude.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY="${PYTHON:-python3}"
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
if ! "$PY" -c "import faiss" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

timeout 150 "$PY" -m pytest -q -ra -p no:cacheprovider -m cuda tests/datastore/index \
    2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
tests="rc=$tests_rc; $(grep -E '(passed|failed|skipped|error)' "$OUT/gpu_tests.log" | tail -1)"

timeout 300 "$PY" bench/gpu_speed.py --budget-s 180 --tests "$tests" "$@" \
    2>&1 | tee "$OUT/gpu_speed.log"
bench_rc=${PIPESTATUS[0]}
echo "cuda tests: $tests; benchmark rc=$bench_rc; results: $OUT/gpu.json"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
