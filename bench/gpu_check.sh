#!/usr/bin/env bash
# The one script a session with a lent GPU runs (about 5 minutes on an H100/H200, under 8):
#   1. installs the carried wheels the machine lacks (.whl: zstandard, gguf; see bench/_device.sh);
#   2. the Triton kernels compiled on the GPU against their torch references
#      (OFFLOAD_KERNEL_DEVICE=cuda TRITON_INTERPRET=0: tests/kernels), the compile-without-spills test,
#      and the CUDA-only tests (a sparse step makes no new allocator segments);
#   3. bench/long_context.py (W-GPU: Llama-3.1-8B geometry, random bf16 weights, the GPU capped at
#      24 GiB): offload decode at 32k/128k/200k/500k against its bandwidth floor, HF's offloaded cache
#      at 32k/128k, exact offload at 32k, layer-major prefill at 32k/128k.
# Writes to $OUT: env.txt (machine, versions), kernels.txt (pytest), long_context.md (the table) and
# long_context.jsonl (one JSON row per measurement), summary.md (all of it, in that order).
#
#   bench/gpu_check.sh               on the GPU machine (device tool: carry .whl, timeout_s 560)
#   bench/gpu_check.sh --cpu-smoke   the same steps on this machine's CPU at toy sizes (a test runs it)
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT" || exit 2
PY=${PYTHON:-python3}
. "$here/bench/_device.sh"

smoke=0
case "${1:-}" in
    "") ;;
    --cpu-smoke) smoke=1; [ -n "${PYTHON:-}" ] || PY="$here/.venv/bin/python" ;;
    *) sed -n 2,15p "$0"; exit 2 ;;
esac
start=$(date +%s)
set -o pipefail
export PYTHONUNBUFFERED=1

if [ "$smoke" = 1 ]; then
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" OFFLOAD_KERNEL_DEVICE=cpu TRITON_INTERPRET=1
    kernel_tests=(tests/kernels/test_kernel_sparse_decode.py tests/kernels/test_kernel_chunk_score.py
                  tests/kernels/test_kernel_token_decode.py -k "default_launch or no_chunks or row_with_nothing")
    bench=(--tiny)
else
    packages
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || die "torch sees no GPU"
    export OFFLOAD_KERNEL_DEVICE=cuda TRITON_INTERPRET=0
    kernel_tests=(tests/kernels/test_kernel_sparse_decode.py tests/kernels/test_kernel_chunk_score.py
                  tests/kernels/test_kernel_token_decode.py tests/kernels/test_kernel_sketch_score.py
                  tests/kernels/test_kernel_compile.py tests/kernels/test_kernel_reference.py
                  tests/test_sync_free_step.py::test_sparse_steps_make_no_new_cuda_segments
                  tests/tiers/test_token_cache.py::test_the_cache_step_equals_the_all_resident_step
                  tests/tiers/test_lookahead.py::test_a_store_fetching_ahead_attends_as_one_that_does_not)
    bench=()
fi

machine_facts > "$OUT/env.txt"
kernels_rc=0
timeout 150 "$PY" -m pytest -q -p no:cacheprovider "${kernel_tests[@]}" > "$OUT/kernels.txt" 2>&1 || kernels_rc=$?
echo "kernel tests: exit $kernels_rc at $(( $(date +%s) - start )) s" >> "$OUT/env.txt"
bench_rc=0
timeout $(( smoke ? 120 : 420 )) "$PY" bench/long_context.py "${bench[@]}" --json "$OUT/long_context.jsonl" \
    > "$OUT/long_context.md" 2>&1 || bench_rc=$?
echo "long_context: exit $bench_rc at $(( $(date +%s) - start )) s" >> "$OUT/env.txt"
{
    echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo; sed 's/^/    /' "$OUT/env.txt"; echo
    echo "## kernels (tests/kernels compiled)"; echo; tail -15 "$OUT/kernels.txt" | sed 's/^/    /'; echo
    echo "## long_context.py"; echo; cat "$OUT/long_context.md"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
[ "$kernels_rc" = 0 ] && [ "$bench_rc" = 0 ]
