"""Crash-safe output: every file the library writes appears whole or not at all (temporary + rename)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np


def atomic_file(path: Path, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp)` on a hidden temporary file beside `path`, then rename it into place.

    A crash or Ctrl-C leaves either the old file or the complete new one, never a partial file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_output_dir(dst: Path, write: Callable[[Path], None], overwrite: bool = False) -> None:
    """Run `write(tmp)` into a fresh temporary folder beside `dst`, then move it into place.

    A failure anywhere leaves `dst` as it was (absent, or the old content).
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; choose another destination or pass overwrite=True (--overwrite).")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        write(tmp / "out")
        if dst.exists():
            old = tmp / "old"
            os.replace(dst, old)
        os.replace(tmp / "out", dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_wav(path: str | os.PathLike, audio: np.ndarray, sampling_rate: int = 16000) -> Path:
    """Write a mono float waveform as 16-bit PCM wav, atomically (temporary file + rename)."""
    import soundfile as sf

    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"save_wav expects one mono waveform (samples,), got shape {audio.shape}.")
    if not np.isfinite(audio).all():
        raise ValueError(f"{path}: the waveform contains NaN or Inf; nothing was written.")
    return atomic_file(Path(path), lambda tmp: sf.write(tmp, audio, sampling_rate, subtype="PCM_16", format="WAV"))
