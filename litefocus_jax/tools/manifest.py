"""The manifest of an output folder: one JSON line per finished item, appended under a lock and fsynced, in
`manifest.jsonl` (or one file per process of a launch, `manifest.p00001-of-00004.jsonl`); readers take every
`manifest*.jsonl`. An item is done iff its line exists and its file does (tools/batch.py)."""

from __future__ import annotations

import fcntl
import glob
import json
import os
from pathlib import Path

import numpy as np

from litefocus_jax.utils.io import atomic_file

MANIFEST_GLOB = "manifest*.jsonl"


def manifest_path(out_dir: Path, process_index: int = 0, process_count: int = 1) -> Path:
    if process_count == 1:
        return out_dir / "manifest.jsonl"
    return out_dir / f"manifest.p{process_index:05d}-of-{process_count:05d}.jsonl"


def read_manifests(out_dir: Path) -> dict[int, dict]:
    """{item index: its last manifest record} over every manifest*.jsonl (a torn last line is ignored)."""
    records = {}
    for path in sorted(glob.glob(str(out_dir / MANIFEST_GLOB))):
        for raw in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(raw)
                records[int(rec["index"])] = rec
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: that item is simply not done
    return records


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line, flushed and fsynced, so a finished item survives a crash right after; under an
    exclusive lock, as two runs in one folder may append to the same manifest."""
    with open(path, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def save_npy(path: Path, audio: np.ndarray) -> None:
    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.save(f, audio)

    atomic_file(path, write)
