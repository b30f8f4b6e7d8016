"""Attention analysis output: per-level tables, the JSON report and Figure-2 style heat maps."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from litefocus_jax.research.analysis.capture import (
    MATPLOTLIB_HINT,
    AttentionCapture,
    AttentionSite,
    _matching,
    key_grid,
    row_mass,
)
from litefocus_jax.utils.io import atomic_file

# ---------------------------------------------------------------------------------------------- summaries


def summarize(capture: AttentionCapture) -> list[dict]:
    """One row per (step, level, site, head): same-row mass averaged over batch rows and queries.

    Each row: step, timestep, level, block, head, freq_bins, tokens, row_mass, uniform (= 1/F, the mass of
    uniform attention) and concentration (= row_mass / uniform; 1 means no preference for the own row).
    """
    rows = []
    for step, timestep in zip(capture.steps, capture.timesteps):
        for site in capture.sites:
            mass = row_mass(capture.probs[step, site.name], site.freq_bins, site.queries)  # (B', H, Q)
            for head, value in enumerate(mass.mean(axis=(0, 2))):
                rows.append(
                    dict(
                        step=step,
                        timestep=timestep,
                        level=site.level,
                        block=site.name,
                        head=head,
                        freq_bins=site.freq_bins,
                        tokens=site.grid[0] * site.grid[1],
                        row_mass=float(value),
                        uniform=1.0 / site.freq_bins,
                        concentration=float(value) * site.freq_bins,
                    )
                )
    return rows


def aggregate(rows: Iterable[Mapping], by: Sequence[str] = ("step", "level")) -> list[dict]:
    """Group `summarize` rows by the `by` keys: mean, min and max row_mass, the uniform baseline, concentration."""
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        mass = np.array([m["row_mass"] for m in members])
        uniform = float(np.mean([m["uniform"] for m in members]))
        out.append(
            dict(
                zip(by, key),
                n=len(members),
                row_mass=float(mass.mean()),
                min=float(mass.min()),
                max=float(mass.max()),
                uniform=uniform,
                concentration=float(mass.mean()) / uniform,
            )
        )
    return out


def format_table(rows: Iterable[Mapping], by: Sequence[str] = ("step", "level"), weights_note: str | None = None) -> str:
    """A printable table of `aggregate(rows, by)`; `weights_note` (e.g. capture.weights_note) heads it."""
    stats = ("n", "row_mass", "min", "max", "uniform", "concentration")
    header = list(by) + ["heads x blocks" if s == "n" else "x uniform" if s == "concentration" else s for s in stats]
    lines = [] if weights_note is None else [weights_note]
    body = [[str(r[k]) for k in by] + [str(r["n"])] + [f"{r[s]:.3f}" for s in stats[1:]] for r in aggregate(rows, by)]
    widths = [max(len(c) for c in col) for col in zip(header, *body)]
    for cells in [header, *body]:
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def write_report(capture: AttentionCapture, path, rows: list[dict] | None = None) -> Path:
    """Write the capture's setup, per-level summary and per-head rows as JSON, atomically. Returns the path."""
    rows = summarize(capture) if rows is None else rows
    lf = None if capture.litefocus is None else dataclasses.asdict(capture.litefocus)
    report = dict(
        weights=capture.weights,
        random_weights=capture.random_weights,
        weights_note=capture.weights_note,
        prompt=capture.prompt,
        negative_prompt=capture.negative_prompt,
        audio_length_in_s=capture.audio_length_in_s,
        num_inference_steps=capture.num_inference_steps,
        guidance_scale=capture.guidance_scale,
        seed=capture.seed,
        litefocus=lf,
        probabilities="dense softmax(q k^T * scale) of the chosen queries over all keys",
        steps=list(capture.steps),
        timesteps=list(capture.timesteps),
        batch_rows=list(capture.batch_rows),
        sites=[dict(name=s.name, level=s.level, grid=list(s.grid), queries=list(s.queries)) for s in capture.sites],
        by_level=aggregate(rows, ("step", "level")),
        rows=rows,
    )
    text = json.dumps(report, indent=1)
    return atomic_file(Path(path), lambda tmp: tmp.write_text(text))


# ---------------------------------------------------------------------------------------------- heat maps


def require_matplotlib():
    """The matplotlib `Figure` class (no pyplot state), or ImportError naming the extra to install."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(MATPLOTLIB_HINT) from e
    return Figure


def save_heatmaps(
    capture: AttentionCapture,
    out_dir,
    *,
    blocks=None,
    steps=None,
    head: int | None = None,
    batch_row: int = -1,
) -> list[Path]:
    """Write one PNG per (step, site): each query's attention map on the (T, F) key grid (the paper's Figure 2).

    Args:
      capture: from `capture_attention`.
      out_dir: created if missing; files are `step{step:03d}_{site name}.png`, each written atomically.
      blocks: None (every captured site), or site names and/or levels.
      steps: None (every captured step), or captured step indices.
      head: None averages the heads; an int picks one.
      batch_row: the row of B' to draw (default -1, the conditional branch).

    Returns:
      The written paths.
    """
    figure = require_matplotlib()
    sites = _matching(capture.sites, blocks)
    steps = capture.steps if steps is None else tuple(steps)
    missing = [s for s in steps if s not in capture.steps]
    if missing:
        raise ValueError(f"save_heatmaps: steps {missing} were not captured (captured: {capture.steps}).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for step in steps:
        for site in sites:
            fig = _heatmap_figure(figure, capture, step, site, head, batch_row)
            path = out_dir / f"step{step:03d}_{site.name}.png"
            paths.append(atomic_file(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100)))
    return paths


def _heatmap_figure(figure, capture: AttentionCapture, step: int, site: AttentionSite, head, batch_row):
    probs = capture.probs[step, site.name][batch_row]  # (H, Q, N)
    probs = probs.mean(axis=0) if head is None else probs[head]
    maps, mass = key_grid(probs, site.grid), row_mass(probs, site.freq_bins, site.queries)
    t_bins, f_bins = site.grid
    fig = figure(figsize=(3.2 * len(site.queries) + 0.8, 3.4), layout="constrained")
    axes = fig.subplots(1, len(site.queries), squeeze=False)[0]
    for ax, grid, query, m in zip(axes, maps, site.queries, mass):
        image = ax.imshow(
            grid.T, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0, vmax=float(maps.max())
        )  # one scale: panels compare
        ax.axhspan(query % f_bins - 0.5, query % f_bins + 0.5, fill=False, edgecolor="red", linestyle="--", linewidth=0.8)
        ax.plot([query // f_bins], [query % f_bins], marker="x", color="red", markersize=8)
        ax.set_title(f"query t={query // f_bins} f={query % f_bins}\nown-row mass {m:.2f} (uniform {1 / f_bins:.2f})", fontsize=8)
        ax.set_xlabel("key time frame")
        ax.set_ylabel("key frequency row")
    fig.colorbar(image, ax=axes, shrink=0.8, label="probability")
    heads = "mean of heads" if head is None else f"head {head}"
    note = " | RANDOM WEIGHTS: no learned structure" if capture.random_weights else ""
    fig.suptitle(
        f"{site.name} (level {site.level}, {t_bins}x{f_bins}) step {step} t={capture.timesteps[capture.steps.index(step)]}"
        f", {capture.batch_rows[batch_row]}, {heads}{note}",
        fontsize=9,
    )
    return fig
