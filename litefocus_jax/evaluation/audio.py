"""Reading the clips to score and preparing them per network as audioldm_eval 0.0.3 does, plus the long-clip policy.

Per network (EVALUATION.md §E.1, §E.3, §E.8):
  PANNs Cnn14   first channel, mean subtracted, resampled to the Cnn14 rate, zero-padded to >= 32,000 samples
                (audioldm_eval `WaveDataset`: `pad_short_audio(min_samples=32000)`), never truncated.
  VGGish        channels averaged, resampled to 16 kHz (audioldm_eval's FAD loader reads 16-bit files as
                int16 / 32768, which is what soundfile's float read returns for them).
  CLAP          channels averaged, resampled to 48 kHz (the CLAP feature extractor's windows; see
                features/feature_extraction_clap.py).
Resampling is soxr "HQ" everywhere (the resampler of the CLAP re-ranking; bit-identical to librosa's default).
audioldm_eval resamples with torchaudio (PANNs) and resampy (VGGish): with AudioLDM2's 16 kHz output and the 16 kHz
Cnn14 no resampling happens except for CLAP; otherwise the features differ slightly from audioldm_eval's.

Long generated clips vs 10 s references (`LONG_AUDIO`, recorded in every output):
  "first"  every generated clip longer than the window (10 s) is cut to its first window; then all metrics as above.
  "mean"   a clip longer than the window is cut into n = ceil(L / window) windows evenly spaced from its start to
           its end (the CLAP extractor's rule); per-file features (Cnn14 embedding and logits, CLAP embedding) are the
           mean over its windows (logits averaged before any softmax); VGGish pools the 0.96 s examples of the whole
           clip (it pools examples of all files anyway). Clips up to one window are unchanged in both modes.
References are never cut.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from litefocus_jax.features.feature_extraction_clap import resample

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
LONG_AUDIO = ("first", "mean")
PANNS_MIN_SAMPLES = 32000


def list_audio(folder: str | os.PathLike) -> dict[str, Path]:
    """{basename: path} of the audio files in `folder`, sorted by name (audioldm_eval sorts too)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of audio files.")
    files = {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".")}
    if not files:
        raise ValueError(f"{folder} holds no {'/'.join(AUDIO_SUFFIXES)} files.")
    return files


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples (L, C) float32 in [-1, 1], sampling rate); a clear error for unreadable or empty files."""
    import soundfile as sf

    try:
        data, sr = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {e}") from e
    if data.shape[0] == 0:
        raise ValueError(f"{path} is empty.")
    if not np.isfinite(data).all():
        raise ValueError(f"{path} contains NaN or Inf samples.")
    return data, int(sr)


def windows(wave: np.ndarray, size: int) -> np.ndarray:
    """(L,) -> (n, size) evenly spaced windows (n = ceil(L / size)), or (1, L) when L <= size."""
    if wave.shape[0] <= size:
        return wave[None]
    n = math.ceil(wave.shape[0] / size)
    starts = np.round(np.linspace(0, wave.shape[0] - size, n)).astype(np.int64)
    return np.stack([wave[s : s + size] for s in starts])


def apply_policy(wave: np.ndarray, sr: int, policy: str, window_s: float) -> list[np.ndarray]:
    """The clip's parts to embed separately (and average) under `policy`; see the module docstring."""
    if policy not in LONG_AUDIO:
        raise ValueError(f"long-audio policy {policy!r} is not one of {LONG_AUDIO}.")
    size = int(round(window_s * sr))
    if wave.shape[0] <= size:
        return [wave]
    return [wave[:size]] if policy == "first" else list(windows(wave, size))


def for_panns(data: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    x = data[:, 0].astype(np.float32)
    x = x - x.mean()
    x = resample(x, sr, target_sr) if sr != target_sr else x
    return np.pad(x, (0, max(0, PANNS_MIN_SAMPLES - x.shape[0])))


def mono(data: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    x = data.mean(axis=1).astype(np.float32)
    return resample(x, sr, target_sr) if sr != target_sr else x
