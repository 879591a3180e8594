# Shared by the scripts a lent GPU machine runs (bench/gpu_check.sh, bench/gpu_eval.sh): sourced, not run.
# The machine has torch, transformers, triton and pytest but not zstandard or gguf: they travel as wheels
# in .whl (the device tool's README says how to download them) and install into /tmp/site.

die() { echo "$(basename "$0"): $*" >&2; exit 2; }

packages() {  # the carried wheels the machine lacks, where it lacks them; offload importable from $here
    if ! "$PY" -c "import zstandard, gguf" 2>/dev/null; then
        [ -d .whl ] || die "zstandard/gguf missing and no .whl carried"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
            || die "wheel install failed"
    fi
    export PYTHONPATH="$here:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
}

machine_facts() {  # the GPU, the versions, the CPUs
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
    "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" 2>&1
    echo "cpus $(nproc)"
}
