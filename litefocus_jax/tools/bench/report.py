"""The benchmark's outputs: bench.json, bench.md (one table per scope and sampler) and bench.png (time against
length, log-log; a bar per implementation when a panel has one length), each written atomically."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from litefocus_jax.tools.bench.results import JAX_DENSE, JAX_LF, TORCH_DENSE, speedup
from litefocus_jax.utils.io import atomic_file

SPEEDUPS = (
    ("LiteFocus vs JAX dense", JAX_LF, JAX_DENSE),
    ("LiteFocus vs diffusers SDPA", JAX_LF, TORCH_DENSE),
    ("JAX dense vs diffusers SDPA", JAX_DENSE, TORCH_DENSE),
)
SCOPE_TITLES = {
    "attention": "one level-1 self-attention call",
    "unet": "one UNet call (batch 2, CFG)",
    "e2e": "end to end: denoising loop + VAE decode + vocoder",
}
SCOPE_NOTES = {
    "attention": "q, k, v (B=2, N1, H, D) at UNet level 1, F = {level1_freq} frequency rows, K = int(0.1 N1) "
    "compensation keys; torch = bare SDPA / the released algorithm over SDPA on the same q, k, v and index.",
    "unet": "Batch 2 (one prompt with classifier-free guidance), {sparse_calls} LiteFocus calls per UNet call; "
    "torch = the diffusers UNet (SDPA processors).",
    "e2e": "One prompt with CFG: the jitted lax.scan over the steps, then VAE decode + vocoder; text encoding "
    "not timed; torch = the diffusers loop with the same model sizes.",
}


def table_groups(measurements: list[dict]) -> dict[tuple, list[dict]]:
    """{(scope, scheduler, steps): measurements}, in first-seen order: one table and plot panel each."""
    groups: dict[tuple, list] = {}
    for m in measurements:
        groups.setdefault((m["scope"], m["scheduler"], m["steps"]), []).append(m)
    return groups


def _title(key: tuple) -> str:
    scope, scheduler, steps = key
    return SCOPE_TITLES[scope] + (f", {scheduler} x {steps} steps" if scheduler else "")


def _cell(m: dict | None) -> str:
    if m is None:
        return ""
    return f"{m['run_s']:.4g}" if m["status"] == "ok" else m["status"].upper() if m["status"] == "oom" else m["status"]


def markdown_table(key: tuple, ms: list[dict]) -> str:
    ids = list(dict.fromkeys(m["id"] for m in ms))
    peer = "torch SDPA" if key[0] == "attention" else "diffusers SDPA"
    head = ["audio (s)", "N1", *ids, *(name.replace("diffusers SDPA", peer) for name, _, _ in SPEEDUPS)]
    note = SCOPE_NOTES[key[0]].format(**ms[0]["geometry"])
    lines = [f"### {key[0]}: {_title(key)}", "", note, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seconds in dict.fromkeys(m["seconds"] for m in ms):
        row_ms = [m for m in ms if m["seconds"] == seconds]
        by_id = {m["id"]: m for m in row_ms}
        ratios = [speedup(row_ms, a, b) for _, a, b in SPEEDUPS]
        cells = [
            f"{seconds:g}",
            str(row_ms[0]["geometry"]["level1_tokens"]),
            *(_cell(by_id.get(i)) for i in ids),
            *("" if r is None else f"{r:.2f}x" for r in ratios),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    cfg, mach = report["config"], report["machine"]
    v = report["versions"]
    lines = [
        f"## Benchmark: {device_name(report)}, {cfg['dtype']}, model {cfg['model']} (random weights)",
        "",
        f"{mach['cpu_model']}, {mach['cpu_affinity']} CPUs (XLA uses {cfg['xla_cpu_threads']}, torch {cfg['threads']} threads), "
        f"{(mach['ram_bytes'] or 0) / 2**30:.0f} GiB RAM; jax {v['jax']}, flax {v['flax']}, torch {v['torch']}, "
        f"diffusers {v['diffusers']}. Median of {cfg['repeats']} runs after a warm-up run ({cfg['e2e_repeats']} for e2e), "
        f"seconds; compile time is excluded (see bench.json). Speedups compare the fastest JAX kernel of each kind; "
        f"LiteFocus = official duplicate mode. OOM / timeout / error / skipped: see each measurement's reason.",
        f"Arguments: `litefocus-jax bench {' '.join(report['arguments'])}`",
    ]
    for key, ms in table_groups(report["measurements"]).items():
        lines += ["", markdown_table(key, ms)]
    return "\n".join(lines) + "\n"


def device_name(report: dict) -> str:
    dev = report["device"]
    return f"CPU {report['machine']['cpu_model']}" if dev["backend"] == "cpu" else f"{dev['backend']} {dev['device_kind']}"


def _panel_title(key: tuple) -> str:
    scope, scheduler, steps = key
    return {"attention": "level-1 attention call", "unet": "UNet call (batch 2)"}.get(scope, f"e2e, {scheduler} x {steps} steps")


def _axis_label(key: tuple, cfg: dict) -> str:
    """The y axis: what is timed, the statistic and the unit, and the configuration that sets the time."""
    repeats = cfg["e2e_repeats"] if key[0] == "e2e" else cfg["repeats"]
    stat = f"median of {repeats} runs" if repeats > 1 else "one run"  # after a warm-up run, compile excluded
    return f"run time (s), {stat}\n{cfg['dtype']}, batch {cfg.get('batch', 2)}, model {cfg['model']}"


def _lines(ax, key: tuple, ms: list[dict], cfg: dict) -> None:
    """Several lengths: run time against audio length, log-log, one line per implementation."""
    for impl_id in dict.fromkeys(m["id"] for m in ms):
        ok = [m for m in ms if m["id"] == impl_id and m["status"] == "ok"]
        if ok:
            ax.plot(
                [m["seconds"] for m in ok],
                [m["run_s"] for m in ok],
                marker="o",
                label=impl_id,
                linestyle="--" if ok[0]["impl"]["framework"] == "torch" else "-",
            )
    ax.set(xscale="log", yscale="log", xlabel="audio length (s)", ylabel=_axis_label(key, cfg), title=_panel_title(key))
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize=7)


def _bars(ax, key: tuple, ms: list[dict], cfg: dict) -> None:
    """One length: a line would be a single point per implementation, so one bar each, its time written on it;
    a failed measurement gets an empty slot labelled with its status."""
    ids = list(dict.fromkeys(m["id"] for m in ms))
    by_id = {m["id"]: m for m in ms}
    heights = [by_id[i]["run_s"] if by_id[i]["status"] == "ok" else 0.0 for i in ids]
    colors = ["tab:orange" if by_id[i]["impl"]["framework"] == "torch" else "tab:blue" for i in ids]
    bars = ax.bar(range(len(ids)), heights, color=colors)
    labels = [f"{h:.3g} s" if by_id[i]["status"] == "ok" else by_id[i]["status"] for i, h in zip(ids, heights)]
    ax.bar_label(bars, labels=labels, fontsize=7)
    ax.set_xticks(range(len(ids)), ids, rotation=25, ha="right", fontsize=7)
    seconds = ms[0]["seconds"]
    ax.set(ylabel=_axis_label(key, cfg), title=f"{_panel_title(key)}, {seconds:g} s of audio")
    ax.grid(True, axis="y", alpha=0.3)


def figure(report: dict):
    """The matplotlib figure of bench.png: one panel per table, run time against audio length per implementation
    (log-log), or, when the panel has a single length, a bar per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report["config"]
    groups = table_groups(report["measurements"])
    cols = min(max(len(groups), 1), 2)
    rows = math.ceil(max(len(groups), 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.8 * rows), squeeze=False)
    for ax, (key, ms) in zip(axes.flat, groups.items()):
        draw = _bars if len({m["seconds"] for m in ms}) == 1 else _lines
        draw(ax, key, ms, cfg)
    for ax in list(axes.flat)[len(groups) :]:
        ax.set_visible(False)
    fig.suptitle(f"{device_name(report)}, {cfg['dtype']}, model {cfg['model']} (random weights: timings only)")
    fig.tight_layout()
    return fig


def plot(report: dict, path: Path) -> None:
    """Write `figure(report)` to `path` as PNG."""
    fig = figure(report)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    atomic_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def json_ready(report: dict) -> dict:
    """The report without the worker-side output paths (temporary files)."""
    ms = [{k: v for k, v in m.items() if not k.startswith("_")} for m in report["measurements"]]
    return dict(report, measurements=ms)


def write_outputs(report: dict, out_dir: Path, final: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_ready(report), indent=1)
    atomic_file(out_dir / "bench.json", lambda tmp: tmp.write_text(text))
    if final:
        atomic_file(out_dir / "bench.md", lambda tmp: tmp.write_text(markdown_report(report)))
        try:
            plot(report, out_dir / "bench.png")
        except ImportError:  # after hours of measurements, a missing plotting library must not lose the results
            print('bench.png not written: matplotlib is missing (pip install "litefocus-jax[analysis]")', file=sys.stderr)
