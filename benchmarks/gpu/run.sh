#!/usr/bin/env bash
# The GPU run of issue 12 in one command (see benchmarks/gpu/README.md):
#
#   bash benchmarks/gpu/run.sh RESULTS_DIR [gpu_run options]      e.g. --dry-run, --budget-s 420, --no-torch
#
# 1. installs the wheels brought in .whl/ (GPU_RUN_WHEELS) into a target folder (GPU_RUN_SITE), no index, no deps;
# 2. sets the persistent compilation cache inside the repo (outputs/jax_cache, ignored by git; kept between calls
#    on a warm machine), caches every compile (min compile time 0), no GPU preallocation (torch shares the process);
# 3. runs ONE Python process, litefocus_jax.tools.bench.gpu_run, which writes RESULTS_DIR/gpu_run.json and
#    gpu_run.md atomically after every job and ends itself at its --budget-s (default 450 s) plus 20 s;
#    `timeout` is the last resort. Its output is also kept in RESULTS_DIR/gpu_run.log.
# GPU_RUN_TAR_CACHE=1 also packs the compilation cache into RESULTS_DIR/jax_cache.tar.gz (reuse elsewhere: unknown).
set -euo pipefail

if [ $# -lt 1 ] || [[ $1 == -* ]]; then
    echo "usage: bash benchmarks/gpu/run.sh RESULTS_DIR [options of python -m litefocus_jax.tools.bench.gpu_run]" >&2
    exit 2
fi
RESULTS=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-python3}
WHEELS=${GPU_RUN_WHEELS:-$ROOT/.whl}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
cd "$ROOT"

PYPATH=$ROOT
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    SITE=${GPU_RUN_SITE:-/tmp/litefocus-gpu-site}
    echo "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE" >&2
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    PYPATH=$SITE:$ROOT
fi
export PYTHONPATH=$PYPATH${PYTHONPATH:+:$PYTHONPATH}

export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$ROOT/outputs/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1
mkdir -p "$JAX_COMPILATION_CACHE_DIR"

set +e
timeout -k 10 "${GPU_RUN_TIMEOUT:-540}" "$PY" -m litefocus_jax.tools.bench.gpu_run "$RESULTS" "$@" 2>&1 | tee "$RESULTS/gpu_run.log"
status=${PIPESTATUS[0]}
set -e

if [ "${GPU_RUN_TAR_CACHE:-0}" = 1 ]; then
    tar -czf "$RESULTS/jax_cache.tar.gz" -C "$JAX_COMPILATION_CACHE_DIR" .
fi
exit "$status"
