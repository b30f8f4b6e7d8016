"""The GPU run (issue 12): one process, one time budget, every figure the GPU targets need.

    bash benchmarks/gpu/run.sh RESULTS_DIR                (on the GPU machine: wheels, cache, then this)
    python -m litefocus_jax.tools.bench.gpu_run RESULTS_DIR [--dry-run] ...

In order of importance, so that a run cut short by its budget still answers the main questions:
  1. the environment: nvidia-smi, device, driver, CUDA/cuDNN/JAX/torch versions;
  2. correctness smoke at small shapes: every attention kernel (dense, LiteFocus official/exact; implementation
     None, xla, cudnn, chunked, pallas) against the float32 XLA path, max error printed (`smoke`);
  3. one UNet call (batch 2, CFG, random weights, real base geometry) at the headline length (80 s): JAX dense,
     JAX LiteFocus official and exact (`--jax-kernel`, cudnn), diffusers SDPA and diffusers + the released
     LiteFocus; then end to end at 80 s (denoising scan + VAE decode + vocoder, batch 1 prompt), dense vs
     LiteFocus, with the first `--steps` sampler;
  4. a whole `--memory-seconds` (320 s) LiteFocus generation: its device peak memory;
  5. the other samplers end to end, and the UNet call at the other lengths (10.24 and 320 s).
The measurements are the benchmark harness's own runners (`jax_runners`, `torch_peers` through
`isolate.run_in_process`), in this one process (a persistent compilation cache pays off on a rerun). Every
job has a time box (SIGALRM, checked between Python operations) clipped to what is left of `--budget-s`; a job
that does not fit is `skipped`, and a watchdog thread writes the results and ends the process if a single
device call outruns the budget. Statuses: ok, unsupported, oom, timeout, error, skipped. Compile times are
recorded apart from run times. Results: gpu_run.json and gpu_run.md in RESULTS_DIR, rewritten atomically
after every job. `--dry-run`: the same code paths at tiny shapes (the tiny UNet, VAE and vocoder) on any
backend, run by tests/tools/test_gpu_run.py so that this script cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from litefocus_jax.tools.bench import environment, gpu_report, smoke
from litefocus_jax.tools.bench.cli import parse_kernel, parse_seconds, parse_steps
from litefocus_jax.tools.bench.isolate import record, run_in_process
from litefocus_jax.tools.bench.report import json_ready
from litefocus_jax.tools.bench.results import agreement
from litefocus_jax.tools.bench.specs import BATCH, GUIDANCE, RATIO, T5_TOKENS, TIMESTEP, implementations, measurement_spec
from litefocus_jax.tools.bench.targets import check_targets, stretch_targets
from litefocus_jax.utils.cli_args import positive_float, positive_int, seed_value
from litefocus_jax.utils.io import atomic_file

SCHEMA = "litefocus-jax-gpu-run/1"
STATUSES = ("ok", "unsupported", "oom", "timeout", "error", "skipped")
GPU_DEFAULTS = dict(
    model="audioldm2",
    dtype="bfloat16",
    unet_seconds=[10.24, 80.0, 320.0],
    e2e_seconds=[80.0],
    steps=["ddim:200", "dpmsolver++:25"],
    memory_seconds=320.0,
    memory_steps="dpmsolver++:25",
    headline_seconds=80.0,
    repeats=5,
    e2e_repeats=1,
    jax_kernel="cudnn",
    budget_s=450.0,
)
DRY_RUN_DEFAULTS = dict(
    GPU_DEFAULTS,
    model="tiny",
    dtype="float32",
    unet_seconds=[0.64],
    e2e_seconds=[0.64],
    steps=["ddim:2"],  # the memory generation runs the other sampler: both run, in the fewest compiles
    memory_seconds=0.96,
    memory_steps="dpmsolver++:2",
    headline_seconds=0.64,
    repeats=1,
    jax_kernel="default",
    budget_s=420.0,
)
BOX_S = dict(smoke=60.0, unet=150.0, e2e=240.0)  # the most one job may take (compile included)
MIN_START_S = 10.0  # a job is not started with less of the budget left
GRACE_S = 20.0  # past the budget, the watchdog writes what there is and ends the process
DEADLINE_EXIT = 3


class MeasurementTimeout(BaseException):
    """Raised in the main thread when a job outlives its time box (BaseException: no runner swallows it)."""


@contextlib.contextmanager
def time_box(seconds: float):
    """Raise MeasurementTimeout in the main thread after `seconds` (at its next Python operation)."""

    def expire(signum, frame):
        raise MeasurementTimeout(f"exceeded its time box of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclasses.dataclass
class Job:
    kind: str  # "smoke" or "measurement"
    id: str
    priority: int
    box_s: float
    payload: dict  # a smoke case, or a measurement spec with its "role" ("timing" or "memory")


def plan_jobs(cfg: dict) -> list[Job]:
    """Every job, most important first (see the module docstring); ties keep the order written here."""
    jobs = [Job("smoke", f"smoke {c['id']}", 0, BOX_S["smoke"], c) for c in smoke.smoke_cases(cfg["smoke_implementations"])]
    unet_impls = implementations([cfg["jax_kernel"]], with_torch=True)
    e2e_impls = [i for i in implementations([cfg["jax_kernel"]], with_torch=False) if i.duplicates != "exact"]

    def add(scope, seconds, impl, priority, scheduler=None, steps=None, role="timing"):
        spec = dict(measurement_spec(scope, seconds, impl, cfg, scheduler, steps), role=role)
        what = f"{scope} {seconds:g} s" + (f" {scheduler}x{steps}" if scheduler else "")
        jobs.append(
            Job("measurement", f"{what} {impl.id}" + (" (memory)" if role == "memory" else ""), priority, BOX_S[scope], spec)
        )

    for seconds in cfg["unet_seconds"]:
        for impl in unet_impls:
            add("unet", seconds, impl, 1 if seconds == cfg["headline_seconds"] else 5)
    for n, (scheduler, steps) in enumerate(cfg["steps"]):
        for seconds in cfg["e2e_seconds"]:
            for impl in e2e_impls:
                add("e2e", seconds, impl, 2 if n == 0 and seconds == cfg["headline_seconds"] else 4, scheduler, steps)
    lf = [i for i in e2e_impls if i.attention == "litefocus"][0]
    add("e2e", cfg["memory_seconds"], lf, 3, *cfg["memory_steps"], role="memory")
    return sorted(jobs, key=lambda j: j.priority)


def kernel_fallback(kernel: str | None, smoke_results: list[dict]) -> str | None:
    """Why the measurements should not use `kernel` (its smoke failed, or disagreed with XLA), or None."""
    bad = [s for s in smoke_results if kernel is not None and s["implementation"] == kernel and not s.get("agrees")]
    if not bad:
        return None
    failures = ", ".join(f"{s['id']} {s['status']}" + ("" if s["status"] != "ok" else " beyond tolerance") for s in bad)
    return f"the smoke of {kernel!r} did not pass ({failures}); measured with the library's default kernel instead"


def evaluate_targets(report: dict) -> list[dict]:
    """The issue's GPU targets and stretch targets on this run's numbers (MISSING where a figure is absent)."""
    as_gpu = dict(report, device=dict(report["environment"]["device"], backend="gpu"))
    return check_targets(as_gpu) + stretch_targets(as_gpu)


def device_memory() -> dict:
    """The JAX device's bytes in use, peak (process-wide, never reset) and limit; None values on CPU."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return {k: stats.get(k) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")}


def release_memory() -> None:
    """Free what the last job left: Python garbage (JAX buffers with it), and torch's cached CUDA blocks."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class GpuRun:
    """The jobs, the report they fill, and its atomic writing (from the main thread or the watchdog)."""

    def __init__(self, cfg: dict, report: dict, out_dir: Path, workdir: Path, start: float):
        self.cfg, self.report, self.out_dir, self.workdir = cfg, report, out_dir, workdir
        self.start, self.deadline = start, start + cfg["budget_s"]
        self.lock = threading.RLock()
        self.pending: list[Job] = []
        self.current: Job | None = None
        self.done = False

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def write(self) -> None:
        """gpu_run.json and gpu_run.md, each whole or not at all."""
        with self.lock:
            self.report["elapsed_s"] = self.elapsed()
            self.report["memory"] = gpu_report.memory_summary(self.report)
            self.report["targets"] = evaluate_targets(self.report)
            ready = json_ready(self.report)
            atomic_file(self.out_dir / "gpu_run.json", lambda tmp: tmp.write_text(json.dumps(ready, indent=1)))
            atomic_file(self.out_dir / "gpu_run.md", lambda tmp: tmp.write_text(gpu_report.markdown(ready)))

    def add(self, job: Job, result: dict) -> None:
        with self.lock:
            if self.done:
                return
            if job.kind == "smoke":
                self.report["smoke"].append(result)
            else:
                self.report["measurements"].append(result)

    def skip_record(self, job: Job, status: str, reason: str) -> dict:
        if job.kind == "smoke":
            return dict(job.payload, status=status, reason=reason)
        return dict(record(job.payload, dict(status=status, reason=reason)), role=job.payload["role"])

    def on_deadline(self) -> None:
        """Watchdog: a device call outran the budget; record it and the rest, write, end the process."""
        with self.lock:
            if self.done:
                return
            self.report["stopped"] = f"the watchdog ended the run {GRACE_S:g} s past --budget-s {self.cfg['budget_s']:g}"
            if self.current is not None:
                self.add(self.current, self.skip_record(self.current, "timeout", "still running at the watchdog's deadline"))
            for job in self.pending:
                self.add(job, self.skip_record(job, "skipped", "not started: the watchdog stopped the run"))
            self.write()
            self.done = True
            print(f"gpu_run: stopped by the watchdog; partial results in {self.out_dir}", file=sys.stderr, flush=True)
            os._exit(DEADLINE_EXIT)

    def run_job(self, job: Job, box: float) -> dict:
        if job.kind == "smoke":
            return smoke.run_case(job.payload, self.cfg["dtype"], self.cfg["seed"], self.references)
        spec = job.payload
        if spec["impl"]["framework"] == "torch" and not self.cfg["torch"]["enabled"]:
            return self.skip_record(job, "skipped", self.cfg["torch"]["reason"])
        before = device_memory()
        output = self.workdir / f"{len(self.report['measurements'])}.npy"
        start = time.perf_counter()
        result = run_in_process(dict(spec, output=str(output), run_budget_s=box / 4))
        result["wall_s"] = time.perf_counter() - start
        if result["status"] == "ok":
            result["_output"] = str(output)
        return dict(record(spec, result), role=spec["role"], device_memory_before=before)

    def check_kernel(self) -> None:
        """After the smoke: if the requested JAX kernel failed it, plan the measurements with the default one."""
        self.smoke_pending = False
        reason = kernel_fallback(self.cfg["jax_kernel"], self.report["smoke"])
        if reason:
            print(f"gpu_run: {reason}", file=sys.stderr, flush=True)
            with self.lock:
                self.cfg.update(jax_kernel=None, jax_kernel_fallback=reason)
                self.pending = [j for j in plan_jobs(self.cfg) if j.kind != "smoke"]

    def run(self, jobs: list[Job]) -> None:
        self.references: dict = {}
        self.smoke_pending = True
        self.pending = list(jobs)
        watchdog = threading.Timer(self.cfg["budget_s"] + GRACE_S - self.elapsed(), self.on_deadline)
        watchdog.daemon = True
        watchdog.start()
        try:
            while self.pending:
                if self.pending[0].kind != "smoke" and self.smoke_pending:
                    self.check_kernel()
                with self.lock:
                    job = self.current = self.pending.pop(0)
                left = self.deadline - time.monotonic()
                if left < MIN_START_S:
                    result = self.skip_record(job, "skipped", f"time budget spent ({max(left, 0):.0f} s of --budget-s left)")
                else:
                    box = min(job.box_s, left)
                    try:
                        with time_box(box):
                            result = self.run_job(job, box)
                    except MeasurementTimeout as e:
                        result = self.skip_record(job, "timeout", str(e))
                    release_memory()
                with self.lock:  # with the watchdog's lock: the job is either recorded here or there
                    self.add(job, result)
                    self.current = None
                progress(job, result, self.elapsed())
                self.write()
        finally:
            watchdog.cancel()


def progress(job: Job, result: dict, elapsed: float) -> None:
    if result["status"] != "ok":
        tail = f"{result['status']}: {(result.get('reason') or '')[:160]}"
    elif job.kind == "smoke":
        tail = f"max abs err {result['max_abs_err']:.3g}, rel L2 {result['rel_l2_err']:.3g}"
    else:
        compile_s = result.get("compile_s")
        tail = f"run {result['run_s']:.4g} s" + (f", compile {compile_s:.3g} s" if compile_s is not None else "")
    print(f"[{elapsed:6.1f} s] {job.id}: {tail}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m litefocus_jax.tools.bench.gpu_run",
        description=__doc__.split("\n\n")[0],
        epilog="Defaults (GPU / --dry-run): "
        + "; ".join(f"{k} {GPU_DEFAULTS[k]} / {DRY_RUN_DEFAULTS[k]}" for k in GPU_DEFAULTS if k != "budget_s")
        + ". See benchmarks/gpu/README.md.",
    )
    p.add_argument("results_dir", type=Path, help="where gpu_run.json and gpu_run.md go (created)")
    p.add_argument("--dry-run", action="store_true", help="tiny model and lengths: every code path, on any backend")
    p.add_argument("--budget-s", type=positive_float, default=None, help="wall seconds for all jobs (default 450; dry run 420)")
    p.add_argument("--unet-seconds", nargs="+", type=parse_seconds, default=None, help="UNet-call audio lengths")
    p.add_argument("--e2e-seconds", nargs="+", type=parse_seconds, default=None, help="end-to-end audio lengths")
    p.add_argument("--steps", nargs="+", type=parse_steps, default=None, help="end-to-end samplers, SCHEDULER:STEPS")
    p.add_argument("--memory-seconds", type=parse_seconds, default=None, help="length of the peak-memory generation")
    p.add_argument("--memory-steps", type=parse_steps, default=None, help="its sampler (peak memory does not grow with steps)")
    p.add_argument("--headline-seconds", type=parse_seconds, default=None, help="the length measured first (the targets' 80 s)")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed UNet calls after the warm-up, median")
    p.add_argument("--e2e-repeats", type=positive_int, default=None, help="timed generations after the warm-up")
    p.add_argument(
        "--jax-kernel", default=None, help="JAX attention implementation (cudnn; dry run: default = the library's choice)"
    )
    p.add_argument(
        "--smoke-kernels",
        nargs="+",
        type=parse_kernel,
        default=list(smoke.SMOKE_IMPLEMENTATIONS),
        help="implementations in the correctness smoke (default: default xla cudnn chunked pallas)",
    )
    p.add_argument("--no-torch", action="store_true", help="record the diffusers peers as skipped")
    p.add_argument("--seed", type=seed_value, default=0, help="weights, inputs and LiteFocus indices (default 0)")
    return p


def make_config(args, backend: str) -> dict:
    defaults = DRY_RUN_DEFAULTS if args.dry_run else GPU_DEFAULTS
    value = {k: defaults[k] if getattr(args, k, None) is None else getattr(args, k) for k in defaults}
    steps = [s if isinstance(s, tuple) else parse_steps(s) for s in value["steps"]]
    memory_steps = value["memory_steps"] if isinstance(value["memory_steps"], tuple) else parse_steps(value["memory_steps"])
    return dict(
        value,
        dry_run=args.dry_run,
        xla_optimizations="mostly disabled (dry run)" if args.dry_run else "default",
        steps=[list(s) for s in steps],
        memory_steps=list(memory_steps),
        jax_kernel=parse_kernel(value["jax_kernel"]),
        jax_kernel_requested=parse_kernel(value["jax_kernel"]),
        jax_kernel_fallback=None,
        smoke_implementations=args.smoke_kernels,
        smoke_shape=dict(smoke.SMOKE_SHAPE),
        backend=backend,
        threads=environment.cpu_threads(),
        seed=args.seed,
        torch=environment.torch_peers_config(args.no_torch),
        boxes_s=dict(BOX_S),
        min_start_s=MIN_START_S,
        grace_s=GRACE_S,
        batch=BATCH,
        t5_tokens=T5_TOKENS,
        timestep=TIMESTEP,
        guidance=GUIDANCE,
        litefocus_ratio=RATIO,
    )


def safely(probe) -> dict:
    """probe(), or {"error": what went wrong}: a broken probe must not cost the GPU session its measurements."""
    try:
        return probe()
    except Exception as e:  # noqa: BLE001
        return dict(error=f"{type(e).__name__}: {e}")


def compilation_cache() -> dict:
    """Where the persistent compilation cache is and what it holds (files, bytes): compare a rerun's."""
    directory = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    files = [p for p in Path(directory).rglob("*") if p.is_file()] if directory and Path(directory).is_dir() else []
    env = (
        "JAX_COMPILATION_CACHE_DIR",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
        "XLA_PYTHON_CLIENT_PREALLOCATE",
        "XLA_FLAGS",
    )
    return dict(env={k: os.environ.get(k) for k in env}, files=len(files), bytes=sum(p.stat().st_size for p in files))


def main(argv=None) -> int:
    start = time.monotonic()
    args = build_parser().parse_args(argv)
    import jax

    backend = jax.default_backend()
    if args.dry_run:  # its figures mean nothing: compile the tiny programs faster (about a third less)
        jax.config.update("jax_disable_most_optimizations", True)
    if backend == "cpu" and not args.dry_run:
        print("gpu_run: no accelerator (JAX backend cpu); the real geometry will mostly time out here", file=sys.stderr)
    cfg = make_config(args, backend)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    report = dict(
        schema=SCHEMA,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        complete=False,
        stopped=None,
        dry_run=args.dry_run,
        arguments=list(sys.argv[1:] if argv is None else argv),
        elapsed_s=None,
        summary=None,
        environment=dict(
            machine=environment.machine_info(),
            device=environment.device_info(),
            versions=environment.versions(),
            accelerator=safely(environment.accelerator_info),
            compilation_cache_start=compilation_cache(),
        ),
        config=cfg,
        smoke=[],
        measurements=[],
        agreement=[],
        memory=None,
        targets=[],
    )
    report["summary"] = gpu_report.summary(report)
    print(f"gpu_run on {report['summary']['device_name']}; writing {args.results_dir}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="litefocus-gpu-run-") as workdir:
        run = GpuRun(cfg, report, args.results_dir, Path(workdir), start)
        run.run(plan_jobs(cfg))
        with run.lock:
            report["agreement"] = agreement(report["measurements"])
    report["environment"]["torch"] = safely(environment.torch_info)
    report["environment"]["compilation_cache_end"] = compilation_cache()
    report["complete"] = True
    run.write()
    print(gpu_report.markdown(json_ready(report)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
