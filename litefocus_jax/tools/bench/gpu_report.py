"""The GPU run's outputs: the summary line (device, driver, versions), the peak-memory summary of the long
generation, and gpu_run.md (smoke, timing tables, compile times, memory, targets, failures)."""

from __future__ import annotations

from litefocus_jax.tools.bench.report import markdown_table, table_groups

SCOPE_ORDER = ("unet", "e2e")


def summary(report: dict) -> dict:
    """Device name, driver and the versions that matter, from the recorded environment."""
    env = report["environment"]
    acc, device, versions = env["accelerator"], env["device"], env["versions"]
    gpus = (acc.get("nvidia_smi") or {}).get("gpus") or [{}]
    cuda = acc.get("cuda") or {}
    if device["backend"] == "cpu":
        name = f"CPU {env['machine']['cpu_model']}"
    else:
        name = gpus[0].get("name") or device["device_kind"]
    return dict(
        device_name=name,
        backend=device["backend"],
        driver=gpus[0].get("driver_version"),
        cuda_runtime=cuda.get("cuda_runtime"),
        cudnn=cuda.get("cudnn"),
        **{k: versions.get(k) for k in ("jax", "jaxlib", "flax", "torch", "diffusers", "transformers", "git_commit")},
    )


def memory_summary(report: dict) -> dict | None:
    """The long generation's device peak. The JAX peak is process-wide and cannot be reset: when it rose during
    the generation (peak_is_own) it is the generation's own peak, else an upper bound of it."""
    found = [m for m in report["measurements"] if m.get("role") == "memory"]
    if not found:
        return None
    m = found[0]
    memory = m.get("memory") or {}
    before = (m.get("device_memory_before") or {}).get("peak_bytes_in_use")
    peak = memory.get("device_peak_bytes")
    return dict(
        id=m["id"],
        seconds=m["seconds"],
        scheduler=m["scheduler"],
        steps=m["steps"],
        status=m["status"],
        reason=m["reason"],
        fits=m["status"] == "ok",
        device_peak_bytes=peak,
        peak_before_bytes=before,
        peak_is_own=None if peak is None or before is None else peak > before,
        bytes_limit=(m.get("device_memory_before") or {}).get("bytes_limit") or report["environment"]["device"]["memory_bytes"],
        xla=memory.get("xla"),
    )


def _num(x, fmt=".3g") -> str:
    return "" if x is None else format(x, fmt)


def _gib(x) -> str:
    return "n/a" if x is None else f"{x / 2**30:.3g}"


def _short(text: str | None, chars: int) -> str:
    """One table cell: no pipes, no newlines, at most `chars` characters."""
    return (text or "").replace("|", "/").replace("\n", " ")[:chars]


def _sorted(report: dict) -> list[dict]:
    """Measurements in table order: scope, sampler (as configured), length; the run order was by importance."""
    samplers = [s for s, _ in report["config"]["steps"]]

    def key(m):
        sampler = samplers.index(m["scheduler"]) if m["scheduler"] in samplers else len(samplers)
        return SCOPE_ORDER.index(m["scope"]), sampler, m["steps"] or 0, m["seconds"]

    return sorted(report["measurements"], key=key)


def _smoke_table(smoke: list[dict]) -> list[str]:
    lines = [
        "| kernel | status | max abs err | rel L2 err | within tolerance | reason |",
        "|---|---|---|---|---|---|",
    ]
    for s in smoke:
        agrees = "" if s.get("agrees") is None else ("yes" if s["agrees"] else f"NO (> {s['tolerance']:g})")
        reason = _short(s.get("reason"), 120)
        lines.append(
            f"| {s['id']} | {s['status']} | {_num(s.get('max_abs_err'))} | {_num(s.get('rel_l2_err'))} | {agrees} | {reason} |"
        )
    return lines


def _compile_table(ms: list[dict]) -> list[str]:
    lines = [
        "| measurement | lower (s) | compile (s) | first run (s) | run (s) | setup (s) | device peak after (GiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in ms:
        if m["status"] == "ok":
            what = f"{m['scope']} {m['seconds']:g} s " + (f"{m['scheduler']}x{m['steps']} " if m["scheduler"] else "") + m["id"]
            cells = [m.get("lower_s"), m.get("compile_s"), m["first_run_s"], m["run_s"], m.get("setup_s")]
            peak = _gib(m["memory"].get("device_peak_bytes"))
            lines.append(f"| {what} | " + " | ".join(_num(c, ".4g") for c in cells) + f" | {peak} |")
    return lines


def _memory_lines(mem: dict | None) -> list[str]:
    if mem is None:
        return ["No peak-memory generation in this run."]
    head = f"{mem['seconds']:g} s of audio, {mem['scheduler']} x {mem['steps']} steps, {mem['id']}: {mem['status']}"
    if mem["status"] != "ok":
        return [f"{head} ({mem['reason']})."]
    own = {True: "the generation's own peak", False: "an upper bound: an earlier job peaked as high", None: "not reported here"}
    xla = mem["xla"] or {}
    return [
        f"{head}. Device peak {_gib(mem['device_peak_bytes'])} GiB ({own[mem['peak_is_own']]}) of "
        f"{_gib(mem['bytes_limit'])} GiB; compiled buffers (memory_analysis, largest stage) {_gib(xla.get('total'))} GiB."
    ]


def markdown(report: dict) -> str:
    s, cfg = report["summary"], report["config"]
    state = "complete" if report["complete"] else f"incomplete ({report['stopped'] or 'running or interrupted'})"
    lines = [
        f"# GPU run: {s['device_name']}" + (" (dry run: tiny shapes)" if report["dry_run"] else ""),
        "",
        f"Driver {s['driver']}, CUDA runtime {s['cuda_runtime']}, cuDNN {s['cudnn']}; jax {s['jax']}, jaxlib {s['jaxlib']}, "
        f"flax {s['flax']}, torch {s['torch']}, diffusers {s['diffusers']}; commit {s['git_commit']}. Model {cfg['model']} "
        f"(random weights), {cfg['dtype']}, JAX kernel {cfg['jax_kernel'] or 'default'}. {state}: "
        f"{_num(report['elapsed_s'], '.0f')} s of a {cfg['budget_s']:g} s budget.",
        f"Arguments: `{' '.join(report['arguments'])}`",
        *([f"JAX kernel fallback: {cfg['jax_kernel_fallback']}."] if cfg.get("jax_kernel_fallback") else []),
        "",
        "## Correctness smoke: each kernel against the float32 XLA path",
        "",
        f"Shapes {cfg['smoke_shape']}, {cfg['dtype']}.",
        "",
        *_smoke_table(report["smoke"]),
        "",
        "## Timings",
        "",
        "Median seconds after a warm-up run; compile time apart (below). OOM / timeout / error / skipped: see the JSON.",
    ]
    ms = _sorted(report)
    for key, group in table_groups(ms).items():
        lines += ["", markdown_table(key, group)]
    lines += ["", "## Compile and run times", "", *_compile_table(ms), "", "## Peak memory", "", *_memory_lines(report["memory"])]
    if report["targets"]:
        lines += ["", "## Targets", "", "| target | status | value | needs |", "|---|---|---|---|"]
        lines += [f"| {t['name']} | {t['status']} | {_num(t['value'])} | >= {t['threshold']:.3g} |" for t in report["targets"]]
    failed = [x for x in report["smoke"] + ms if x["status"] not in ("ok", "unsupported")]
    if failed:
        lines += ["", "## Not measured", "", "| job | status | reason |", "|---|---|---|"]
        for x in failed:
            where = f"{x.get('scope', 'smoke')} {x['seconds']:g} s " if "seconds" in x else "smoke "
            lines.append(f"| {where}{x['id']} | {x['status']} | {_short(x.get('reason'), 300)} |")
    return "\n".join(lines) + "\n"
