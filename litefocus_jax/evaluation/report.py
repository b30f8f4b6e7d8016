"""Prompt lists in, results out: AudioCaps-style prompt files, and the JSON / markdown / plot of an evaluation.

Prompt files (`read_prompts`):
  CSV with a header: a `caption` column and an id column (`audiocap_id`, `id`, `file_name` or `name`); clip key =
    "<id>.wav" (kept as is when the id already ends in .wav/.flac/.ogg), so reference files named by AudioCaps id pair
    with the generated clips for KL.
  JSONL: {"caption" or "prompt": ..., and optionally "audiocap_id" / "id" / "file_name" / "name"}; without an id the
    key is "<line index, 5 digits>.wav".
Every output states whether the evaluation networks (or the generator) had random weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from litefocus_jax.evaluation.audio import AUDIO_SUFFIXES
from litefocus_jax.evaluation.scoring import COLUMNS
from litefocus_jax.utils.io import atomic_file

ID_COLUMNS = ("audiocap_id", "id", "file_name", "name")
TEXT_COLUMNS = ("caption", "prompt")
RANDOM_WARNING = "RANDOM WEIGHTS: {what} had random weights; these numbers only exercise the code and mean nothing."


def _key(ident) -> str:
    ident = str(ident).strip()
    return ident if ident.lower().endswith(AUDIO_SUFFIXES) else f"{ident}.wav"


def read_prompts(path: str | os.PathLike) -> list[tuple[str, str]]:
    """[(clip key, caption)] in file order; errors name the line and what to fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist.")
    text = path.read_text(encoding="utf-8")
    out: list[tuple[str, str]] = []
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if first.startswith("{"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {number}: invalid JSON ({e.msg}).") from None
            caption = next((obj[c] for c in TEXT_COLUMNS if c in obj), None)
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"{path} line {number}: needs a non-empty 'caption' (or 'prompt').")
            ident = next((obj[c] for c in ID_COLUMNS if c in obj), None)
            out.append((_key(ident) if ident is not None else f"{len(out):05d}.wav", caption))
    else:
        rows = list(csv.DictReader(text.splitlines()))
        header = rows[0].keys() if rows else []
        id_col = next((c for c in ID_COLUMNS if c in header), None)
        text_col = next((c for c in TEXT_COLUMNS if c in header), None)
        if id_col is None or text_col is None:
            raise ValueError(
                f"{path}: a CSV needs a header with {' / '.join(ID_COLUMNS)} and caption columns, got {list(header)}."
            )
        for number, row in enumerate(rows, start=2):
            if not (row.get(text_col) or "").strip():
                raise ValueError(f"{path} line {number}: empty caption.")
            out.append((_key(row[id_col]), row[text_col]))
    if not out:
        raise ValueError(f"{path} holds no prompts.")
    keys = [k for k, _ in out]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:3]
        raise ValueError(f"{path}: clip ids repeat ({dup}); each prompt needs its own id.")
    return out


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def write_json(path: Path, data: dict) -> Path:
    return atomic_file(Path(path), lambda tmp: tmp.write_text(json.dumps(_clean(data), indent=2) + "\n"))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(result: dict) -> str:
    """The tables of one evaluation (rows: one per length x setting, or one for a plain folder)."""
    lines = []
    if result.get("warning"):
        lines += [f"**{result['warning']}**", ""]
    lines += [
        f"Long clips vs {result['window_seconds']:g} s references: `{result['long_audio']}` (litefocus_jax.evaluation.audio). "
        f"Cnn14 at {result['sample_rate']} Hz; definitions of audioldm_eval 0.0.3.",
        "",
    ]
    rows = result["rows"]
    extra = [c for c in ("seconds", "setting") if any(c in r for r in rows)]
    cols = [(k, n) for k, n in COLUMNS if any(r.get(k) is not None for r in rows)] + [("seconds_per_clip", "s / clip")]
    head = [{"seconds": "length (s)", "setting": "setting"}[c] for c in extra] + [n for _, n in cols] + ["clips"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (
            [f"{r[c]:g}" if isinstance(r.get(c), float) else _fmt(r.get(c)) for c in extra]
            + [_fmt(r.get(k)) for k, _ in cols]
            + [_fmt(r.get("clips"))]
        )
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({n for r in rows for n in r.get("notes", [])})
    if notes:
        lines += ["", "Not computed:"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, result: dict, *, plot: bool = False) -> list[Path]:
    """results.json + results.md (+ results.png when `plot` and matplotlib is installed) in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [write_json(out_dir / "results.json", result)]
    written.append(atomic_file(out_dir / "results.md", lambda tmp: tmp.write_text(markdown(result))))
    if plot:
        png = plot_rows(out_dir / "results.png", result)
        if png is not None:
            written.append(png)
    return written


def plot_rows(path: Path, result: dict) -> Path | None:
    """Quality and seconds per clip against length, one line per setting (matplotlib; None when absent)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = result["rows"]
    settings: Sequence[str] = sorted({r["setting"] for r in rows})
    panels = [(k, n) for k, n in COLUMNS if k in ("fad", "fd", "kl_softmax", "is_mean", "clap_mean")] + [
        ("seconds_per_clip", "s / clip")
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
    for ax, (key, name) in zip(axes, panels):
        for s in settings:
            pts = sorted((r["seconds"], r[key]) for r in rows if r["setting"] == s and r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=s)
        ax.set_title(name)
        ax.set_xlabel("length (s)")
    axes[0].legend(fontsize=7)
    if result.get("warning"):
        fig.suptitle(result["warning"], fontsize=8, color="red")
    fig.tight_layout()
    atomic_file(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return Path(path)
