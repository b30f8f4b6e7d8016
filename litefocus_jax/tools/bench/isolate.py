"""Running one measurement: in this process, or in a fresh Python process (the worker protocol: one JSON spec
on stdin, one marked JSON result line on stdout), so that peak RSS is its own, memory is freed between long
runs, and an out-of-memory or a timeout is recorded as a status, never a crash."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from litefocus_jax.tools.bench import jax_runners, torch_peers
from litefocus_jax.tools.bench.environment import CHECKOUT, probe
from litefocus_jax.tools.bench.specs import Impl
from litefocus_jax.tools.bench.timing import current_rss_bytes, peak_rss_bytes

RESULT_MARKER = "LITEFOCUS_BENCH_RESULT "
WORKERS = {
    ("jax", "attention"): jax_runners.jax_attention,
    ("jax", "unet"): jax_runners.jax_unet,
    ("jax", "e2e"): jax_runners.jax_e2e,
    ("torch", "attention"): torch_peers.torch_attention,
    ("torch", "unet"): torch_peers.torch_unet,
    ("torch", "e2e"): torch_peers.torch_e2e,
}


def measure(spec: dict) -> dict:
    """Run one measurement in this process. -> the worker's dict plus setup time and RSS figures.

    setup_s is everything before the timed runs that is not compilation (model build, inputs). RSS is only
    meaningful when this process does nothing else (spec["isolated"]).
    """
    rss_start = current_rss_bytes()
    start = time.perf_counter()
    result = WORKERS[(spec["impl"]["framework"], spec["scope"])](spec)
    total = time.perf_counter() - start
    result["setup_s"] = (
        total - (result.get("lower_s") or 0) - (result.get("compile_s") or 0) - result["first_run_s"] - sum(result["runs_s"])
    )
    peak = peak_rss_bytes()
    if spec.get("isolated"):
        result["memory"].update(
            rss_start_bytes=rss_start, peak_rss_bytes=peak, peak_rss_delta_bytes=None if rss_start is None else peak - rss_start
        )
    else:
        result["memory"].update(rss_start_bytes=None, peak_rss_bytes=None, peak_rss_delta_bytes=None)
    return result


def failure_status(text: str) -> str:
    oom = ("RESOURCE_EXHAUSTED", "out of memory", "MemoryError", "bad_alloc", "OutOfMemoryError", "Cannot allocate memory")
    return "oom" if any(s.lower() in text.lower() for s in oom) else "error"


def tail(text: str, chars: int = 1500) -> str:
    return text[-chars:].strip()


def _worker_command() -> list[str]:
    return [sys.executable, "-m", "litefocus_jax.tools.bench", "--worker"]


def _worker_env() -> dict:
    """The parent's environment, with this package importable even from an uninstalled checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CHECKOUT), env.get("PYTHONPATH")) if p)
    return env


def run_isolated(spec: dict, timeout: float) -> dict:
    """Run `measure(spec)` in a fresh Python process. -> its dict, or {"status", "reason"} on failure."""
    try:
        proc = subprocess.run(
            _worker_command(), input=json.dumps(spec), capture_output=True, text=True, timeout=timeout, env=_worker_env()
        )
    except subprocess.TimeoutExpired:
        return dict(status="timeout", reason=f"exceeded --timeout {timeout:g} s (killed)")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    if proc.returncode == -9:
        return dict(status="oom", reason="killed by SIGKILL (most likely the kernel's OOM killer)")
    return dict(status=failure_status(proc.stderr), reason=f"worker exit status {proc.returncode}: {tail(proc.stderr)}")


def run_in_process(spec: dict) -> dict:
    try:
        return dict(status="ok", **measure(spec))
    except Exception as e:  # noqa: BLE001 - a failed measurement is a result, not a harness crash
        text = f"{type(e).__name__}: {e}"
        return dict(status=failure_status(text), reason=tail(text))


def worker_main() -> int:
    """`--worker`: read one spec (JSON) on stdin, print one marked JSON result line on stdout."""
    spec = json.loads(sys.stdin.read())
    limit = spec.get("memory_limit_bytes")
    if limit:  # an allocation past it fails (and is recorded as oom) instead of waking the kernel's OOM killer
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = probe() if spec.get("probe") else run_in_process(spec)
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


def _skip_reason(spec: dict, cfg: dict, failed: dict) -> str | None:
    impl = Impl(**spec["impl"])
    if impl.framework == "jax" and impl.kernel == "cudnn" and cfg["dtype"] == "float32":
        return "cuDNN attention needs float16/bfloat16; run with --dtype bfloat16"
    earlier = failed.get(_series(spec))
    if earlier is not None and spec["seconds"] > earlier[0]:
        return f"{earlier[1]} at {earlier[0]:g} s"
    return None


def _series(m: dict) -> tuple:
    return (m["scope"], m.get("scheduler"), m.get("steps"), m["id"])


def run_one(spec: dict, cfg: dict, failed: dict, output: Path) -> dict:
    """Run (or skip) one measurement, its output array saved to `output` (.npy); an OOM or timeout is also
    recorded in `failed`, so that longer lengths of the same series are skipped."""
    reason = _skip_reason(spec, cfg, failed)
    if reason:
        return dict(status="skipped", reason=reason)
    spec = dict(spec, output=str(output), isolated=cfg["isolation"] == "subprocess")
    start = time.perf_counter()
    if cfg["isolation"] == "subprocess":
        result = run_isolated(dict(spec, memory_limit_bytes=cfg["memory_limit_bytes"]), cfg["timeout_s"])
    else:
        result = run_in_process(spec)
    result["wall_s"] = time.perf_counter() - start
    if result["status"] in ("oom", "timeout"):
        failed.setdefault(_series(spec), (spec["seconds"], result["status"]))
    if result["status"] == "ok":
        result["_output"] = spec["output"]
    return result


def record(spec: dict, result: dict) -> dict:
    keep = ("id", "scope", "seconds", "scheduler", "steps", "impl", "geometry", "dtype", "repeats")
    return {**{k: spec[k] for k in keep}, "reason": None, **result}
