"""Benchmark harness: JAX dense and LiteFocus attention against the PyTorch/diffusers peers, at the real
AudioLDM2 geometry with random weights, over audio lengths.

    litefocus-jax bench [--scopes attention unet e2e] [--seconds 10.24 20 40 80 160 320] [--quick] ...
    python benchmarks/run_benchmarks.py ...      (the same, from a checkout)

Three scopes, each timed per audio length and implementation:
  attention  one level-1 self-attention call: q, k, v (B=2, N, H, D), N = (T0/2) * 8 level-1 tokens;
  unet       one UNet call, batch 2 (one prompt with classifier-free guidance);
  e2e        the jitted denoising loop (lax.scan over the steps, real-size UNet) plus VAE decode and vocoder;
             text encoding is not timed (random text states of the real shapes stand in for it).
Implementations: JAX dense and LiteFocus (official and exact duplicate modes) per `--jax-impls` kernel,
and the PyTorch peers: torch SDPA dense / the released LiteFocus algorithm in row form over SDPA (the
diffusers UNet with those processors in the unet and e2e scopes).

Every measurement runs in a fresh subprocess (`--isolation subprocess`, the default), so peak RSS is its
own, memory is freed between long runs, and an out-of-memory or `--timeout` is recorded as a status,
never a crash. Results: bench.json (machine, versions, configuration, every measurement), bench.md (one
table per scope) and bench.png (time against length, log-log), written atomically to --out-dir
(default benchmarks/results/<device tag>/). Random weights: timings only, no audio meaning.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import tempfile
from pathlib import Path

from litefocus_jax.tools.bench.environment import cpu_threads, device_tag, machine_info, probe, ram_bytes, torch_peers_config
from litefocus_jax.tools.bench.isolate import record, run_isolated, run_one, worker_main
from litefocus_jax.tools.bench.report import markdown_report, write_outputs
from litefocus_jax.tools.bench.results import agreement
from litefocus_jax.tools.bench.specs import (
    BATCH,
    DEFAULT_SECONDS,
    DEFAULT_STEPS,
    GUIDANCE,
    MODELS,
    QUICK_DEFAULTS,
    RATIO,
    SCHEDULERS,
    SCHEMA,
    SCOPES,
    T5_TOKENS,
    TIMESTEP,
    default_jax_impls,
    plan_measurements,
)
from litefocus_jax.tools.bench.targets import check_targets, print_targets
from litefocus_jax.utils.cli_args import positive_float, positive_int, seed_value


def parse_steps(text: str) -> tuple[str, int]:
    """ "ddim:200" -> ("ddim", 200)."""
    name, _, count = text.partition(":")
    if name not in SCHEDULERS or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: use SCHEDULER:STEPS with SCHEDULER in {SCHEDULERS}, e.g. ddim:200.")
    return name, int(count)


def parse_seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0.32:
        raise argparse.ArgumentTypeError(f"{text!r}: audio lengths must be >= 0.32 s (LiteFocus needs compensation tokens).")
    return value


def parse_kernel(text: str) -> str | None:
    return None if text.lower() in ("default", "none") else text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="litefocus-jax bench",
        description=__doc__.split("\n\n")[0],
        epilog="See benchmarks/README.md for the output columns.",
    )
    p.add_argument("--scopes", nargs="+", choices=SCOPES, default=list(SCOPES), help="what to time (default: all three)")
    p.add_argument(
        "--seconds",
        nargs="+",
        type=parse_seconds,
        default=None,
        help=f"audio lengths for the attention and unet scopes (default {' '.join(f'{s:g}' for s in DEFAULT_SECONDS)})",
    )
    p.add_argument(
        "--e2e-seconds",
        nargs="+",
        type=parse_seconds,
        default=None,
        help="audio lengths for e2e (default: --seconds). On CPU, 200 steps at 80 s take hours",
    )
    p.add_argument(
        "--steps",
        nargs="+",
        type=parse_steps,
        default=None,
        help=f"e2e samplers as SCHEDULER:STEPS (default {' '.join(DEFAULT_STEPS)})",
    )
    p.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16"), default="auto", help="auto: float32 on CPU, bfloat16 on GPU/TPU"
    )
    p.add_argument("--repeats", type=positive_int, default=None, help="timed runs after the warm-up, median (default 3)")
    p.add_argument("--e2e-repeats", type=positive_int, default=None, help="the same for e2e (default 1)")
    p.add_argument(
        "--jax-impls",
        nargs="+",
        type=parse_kernel,
        default=None,
        metavar="KERNEL",
        help="JAX attention implementations (default: xla on CPU/TPU, xla cudnn on GPU; 'default' = JAX chooses)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch/diffusers peers")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="PATTERN",
        default=None,
        help="run only implementations whose id matches one of these shell patterns, e.g. "
        "'jax-litefocus-*' 'torch-*' (ids: jax-dense:xla, torch-litefocus-official:sdpa, ...)",
    )
    p.add_argument(
        "--torch-threads",
        type=positive_int,
        default=None,
        help="torch intra-op threads (default: the CPUs XLA uses, i.e. this process's CPU affinity)",
    )
    p.add_argument(
        "--model",
        choices=MODELS,
        default=None,
        help="geometry, random weights built in-process, no download (default audioldm2; --quick: tiny, the demo's tiny "
        "VAE, vocoder and text stack with a two-level UNet)",
    )
    p.add_argument(
        "--isolation",
        choices=("subprocess", "none"),
        default=None,
        help="subprocess: each measurement in a fresh process (default; needed for RSS, --timeout, OOM "
        "recovery); none: all in this process (--quick default)",
    )
    p.add_argument("--timeout", type=positive_float, default=3600.0, help="seconds per measurement (default 3600)")
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="CPU only: address-space limit per measurement process (default 90%% of RAM; 0 = none)",
    )
    p.add_argument("--seed", type=seed_value, default=0, help="weights, inputs and LiteFocus indices (default 0)")
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results/<device tag>/")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: tiny model, 0.64 s, 1 repeat, 2-step samplers, in-process (explicit options win)",
    )
    p.add_argument("--check-targets", action="store_true", help="print PASS/FAIL for the issue's speed targets")
    p.add_argument("--dry-run", action="store_true", help="print the measurements that would run, run nothing")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def _resolve_defaults(args) -> None:
    defaults = dict(
        seconds=list(DEFAULT_SECONDS),
        repeats=3,
        e2e_repeats=1,
        steps=[parse_steps(s) for s in DEFAULT_STEPS],
        model="audioldm2",
        isolation="subprocess",
    )
    if args.quick:
        defaults.update(QUICK_DEFAULTS, steps=[parse_steps(s) for s in QUICK_DEFAULTS["steps"]])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.e2e_seconds is None:
        args.e2e_seconds = list(args.seconds)


def probe_environment(isolation: str) -> dict:
    """Device and versions, from a worker process when isolated: the parent must not initialise the JAX
    backend (on a GPU it would preallocate memory that the measurements need)."""
    if isolation == "none":
        return probe()
    result = run_isolated(dict(probe=True), timeout=600)
    if result.get("status") != "ok":
        raise RuntimeError(f"could not start a JAX worker process: {result.get('reason')}")
    return result


def make_config(args, env: dict) -> dict:
    backend = env["device"]["backend"]
    limit = args.memory_limit_gb
    if limit is None:
        limit = 0.9 * (ram_bytes() or 0) / 2**30
    return dict(
        scopes=args.scopes,
        seconds=args.seconds,
        e2e_seconds=args.e2e_seconds,
        steps=[list(s) for s in args.steps],
        dtype=("float32" if backend == "cpu" else "bfloat16") if args.dtype == "auto" else args.dtype,
        repeats=args.repeats,
        e2e_repeats=args.e2e_repeats,
        model=args.model,
        weights="random: every model's weights are drawn in-process (no download); timings only",
        backend=backend,
        jax_impls=args.jax_impls or default_jax_impls(backend),
        torch=torch_peers_config(args.no_torch),
        threads=args.torch_threads or cpu_threads(),
        xla_cpu_threads=cpu_threads(),
        isolation=args.isolation,
        timeout_s=args.timeout if args.isolation == "subprocess" else None,
        memory_limit_bytes=int(limit * 2**30) if backend == "cpu" and args.isolation == "subprocess" and limit > 0 else None,
        only=args.only,
        seed=args.seed,
        quick=args.quick,
        batch=BATCH,
        t5_tokens=T5_TOKENS,
        timestep=TIMESTEP,
        guidance=GUIDANCE,
        litefocus=dict(
            ratio=RATIO,
            levels=[1],
            resample="per_call",
            torch_indices="torch.randperm per sparse call (released); attention scope: the JAX index",
        ),
        e2e_text="not timed: random GPT2/T5 states of the model's conditioning shapes stand in for text encoding",
    )


def _progress(i: int, n: int, spec: dict, result: dict) -> None:
    what = f"[{i}/{n}] {spec['scope']} {spec['seconds']:g} s" + (
        f" {spec['scheduler']}x{spec['steps']}" if spec["scheduler"] else ""
    )
    if result["status"] == "ok":
        compile_s = result.get("compile_s")
        tail = f"run {result['run_s']:.4g} s" + (f", compile {compile_s:.3g} s" if compile_s is not None else "")
    else:
        tail = f"{result['status']}: {(result.get('reason') or '')[:200]}"
    print(f"{what} {spec['id']}: {tail}", file=sys.stderr, flush=True)


def run_benchmarks(cfg: dict, report: dict, out_dir: Path) -> None:
    specs = plan_measurements(cfg)
    failed: dict = {}
    with tempfile.TemporaryDirectory(prefix="litefocus-bench-") as workdir:
        for i, spec in enumerate(specs, 1):
            result = run_one(spec, cfg, failed, Path(workdir) / f"{i}.npy")
            report["measurements"].append(record(spec, result))
            _progress(i, len(specs), spec, result)
            write_outputs(report, out_dir, final=False)
        report["agreement"] = agreement(report["measurements"])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main()
    _resolve_defaults(args)
    try:
        env = probe_environment(args.isolation)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = make_config(args, env)
    machine = machine_info()
    out_dir = args.out_dir or Path("benchmarks/results") / device_tag(machine, env["device"])
    if args.dry_run:
        for spec in plan_measurements(cfg):
            print(
                f"{spec['scope']:9s} {spec['seconds']:>7g} s {spec['scheduler'] or '':11s} {spec['steps'] or '':>4} {spec['id']}"
            )
        return 0
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create --out-dir {out_dir}: {e}", file=sys.stderr)
        return 2
    print(
        f"benchmark on {env['device']['backend']} ({env['device']['device_kind']}), {cfg['dtype']}, model {cfg['model']} "
        f"(RANDOM WEIGHTS, built in-process: timings only), "
        f"torch peers {'on' if cfg['torch']['enabled'] else 'off: ' + cfg['torch']['reason']}; writing {out_dir}",
        file=sys.stderr,
    )
    report = dict(
        schema=SCHEMA,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        complete=False,
        command=[Path(sys.argv[0]).name, *sys.argv[1:]],
        arguments=list(sys.argv[1:] if argv is None else argv),
        machine=machine,
        device=env["device"],
        versions=env["versions"],
        config=cfg,
        measurements=[],
        agreement=[],
        targets=None,
    )
    run_benchmarks(cfg, report, out_dir)
    report["complete"] = True
    if args.check_targets:
        report["targets"] = check_targets(report)
    write_outputs(report, out_dir, final=True)
    print(markdown_report(report))
    if report["targets"]:
        print_targets(report["targets"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
