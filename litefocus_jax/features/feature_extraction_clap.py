"""CLAP's audio front end: transformers `ClapFeatureExtractor` (unfused "rand_trunc" settings) in NumPy, plus the
16 kHz -> 48 kHz resampling diffusers does with librosa, here with soxr (librosa's default `soxr_hq`, bit-identical).

No librosa and no torch at run time. Everything runs on the host in float64 as transformers does (a float32 FFT
gives dB errors of several units in near-silent bins, EVALUATION.md §B.3):

  clip (L samples at 48 kHz) -> window(s) of exactly M = max_length_s * 48000 samples
  -> STFT: reflect-pad fft/2, periodic Hann, hop 480, rfft (stored as complex64, as transformers does), |X|^2
  -> Slaney mel filter bank (fmin..fmax, area-normalised) -> max(., 1e-10) -> 10 log10 -> (frames, n_mels) float32

Clips of at most M samples are padded as transformers pads them ("repeatpad": tiled, then zero-padded), so their
features equal `ClapFeatureExtractor`'s. Longer clips: transformers ("rand_trunc") scores ONE random M-sample crop,
drawn from NumPy's global RNG, so a re-ranking depends on hidden state and ignores the rest of the clip. Here a
longer clip is cut into n = ceil(L / M) windows of M samples, evenly spaced from the start to the end (the first
starts at 0, the last ends at L, neighbours overlap when L is not a multiple of M), and the caller averages the
windows' embeddings: deterministic, and every sample is scored. AudioLDM2's default 10.24 s gives two windows,
[0, 10 s) and [0.24 s, 10.24 s).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

WHAT = "CLAP feature extractor"
PADDINGS = ("repeatpad", "repeat", "pad")
MEL_FLOOR = 1e-10  # power floor before the log: -100 dB


@dataclasses.dataclass(frozen=True)
class ClapFeatureExtractor:
    """The log-mel front end of CLAP, configured like transformers' `ClapFeatureExtractor`.

    Defaults are cvssp/audioldm2's `feature_extractor/preprocessor_config.json` (= laion/clap-htsat-unfused).

    Attributes:
      sampling_rate: Hz of the audio it takes (48000).
      feature_size: mel bins (64).
      fft_window_size / hop_length: STFT frame and hop in samples (1024 / 480).
      max_length_s: the CLAP window in seconds (10): M = max_length_s * sampling_rate samples, M // hop + 1 frames.
      frequency_min / frequency_max: mel filter bank range in Hz (50 / 14000).
      padding: how clips shorter than the window are filled: "repeatpad" (tile, then zeros), "repeat" (tile and
        cut), "pad" (zeros).
      padding_value: transformers' zero padding (0.0; other values are refused: transformers ignores them here too).
    """

    sampling_rate: int = 48000
    feature_size: int = 64
    fft_window_size: int = 1024
    hop_length: int = 480
    max_length_s: int = 10
    frequency_min: float = 50.0
    frequency_max: float = 14000.0
    padding: str = "repeatpad"
    padding_value: float = 0.0

    def __post_init__(self):
        bad = lambda why: ValueError(f"{WHAT}: {why}")  # noqa: E731
        if self.padding not in PADDINGS:
            raise bad(f"padding={self.padding!r} is not one of {PADDINGS}.")
        if self.padding_value != 0.0:
            raise bad(f"padding_value={self.padding_value} is not supported (transformers pads CLAP input with zeros).")
        if min(self.sampling_rate, self.feature_size, self.fft_window_size, self.hop_length) < 1:
            raise bad("sampling_rate, feature_size, fft_window_size and hop_length must be >= 1.")
        if self.fft_window_size < 2 or self.fft_window_size % 2:
            raise bad(f"fft_window_size={self.fft_window_size} must be even.")
        if not 0 <= self.frequency_min < self.frequency_max <= self.sampling_rate / 2:
            raise bad(
                f"need 0 <= frequency_min < frequency_max <= sampling_rate / 2, got {self.frequency_min}, {self.frequency_max}."
            )
        samples = self.max_length_s * self.sampling_rate
        if samples != int(samples) or samples <= self.fft_window_size // 2:
            raise bad(f"max_length_s * sampling_rate = {samples} must be a whole number of samples > fft_window_size / 2.")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ClapFeatureExtractor:
        """From a `preprocessor_config.json` dict. Absent keys take transformers' class defaults (note: frequency_min 0
        and truncation "fusion" there); "fusion" truncation (the fused CLAP's 4-channel input) is refused."""
        kind = config.get("feature_extractor_type", "ClapFeatureExtractor")
        if kind != "ClapFeatureExtractor":
            raise ValueError(f"{WHAT}: feature_extractor_type is {kind!r}, expected 'ClapFeatureExtractor'.")
        truncation = config.get("truncation", "fusion")
        if truncation != "rand_trunc":
            raise ValueError(
                f"{WHAT}: truncation={truncation!r} is not supported; the unfused CLAP of AudioLDM2 uses 'rand_trunc' (which "
                "this port replaces by deterministic windows for long clips)."
            )
        get = lambda key, default: config.get(key, default)  # noqa: E731
        return cls(
            sampling_rate=int(get("sampling_rate", 48000)),
            feature_size=int(get("feature_size", 64)),
            fft_window_size=int(get("fft_window_size", 1024)),
            hop_length=int(get("hop_length", 480)),
            max_length_s=get("max_length_s", 10),
            frequency_min=float(get("frequency_min", 0.0)),
            frequency_max=float(get("frequency_max", 14000.0)),
            padding=get("padding", "repeatpad"),
            padding_value=float(get("padding_value", 0.0)),
        )

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> ClapFeatureExtractor:
        """From a snapshot's `feature_extractor/` folder (its preprocessor_config.json)."""
        file = Path(folder) / "preprocessor_config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing; point at the feature_extractor/ folder of an AudioLDM2 snapshot.")
        try:
            return cls.from_dict(json.loads(file.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: invalid JSON ({e}).") from e

    @property
    def max_samples(self) -> int:
        """M: samples in one CLAP window."""
        return int(self.max_length_s * self.sampling_rate)

    @property
    def frames(self) -> int:
        """Log-mel frames of one window (1001 for cvssp)."""
        return self.max_samples // self.hop_length + 1

    def num_windows(self, length: int) -> int:
        return max(1, math.ceil(length / self.max_samples))

    def windows(self, waveform) -> np.ndarray:
        """One clip (L,) -> (n, M) float64: the padded clip (L <= M) or n = ceil(L / M) evenly spaced windows."""
        wave = np.asarray(waveform, dtype=np.float64)
        if wave.ndim != 1 or wave.size == 0:
            raise ValueError(f"{WHAT}: a clip must be a non-empty 1-D waveform, got shape {wave.shape}.")
        m, n = self.max_samples, wave.shape[0]
        if n > m:
            starts = np.round(np.linspace(0, n - m, self.num_windows(n))).astype(np.int64)
            return np.stack([wave[s : s + m] for s in starts])
        if n < m and self.padding == "repeat":
            wave = np.tile(wave, int(m / n) + 1)[:m]
        elif n < m and self.padding == "repeatpad":
            wave = np.tile(wave, int(m / n))
        return np.pad(wave, (0, m - wave.shape[0]))[None]

    def log_mel(self, windows: np.ndarray) -> np.ndarray:
        """(n, M) float64 windows -> (n, frames, feature_size) float32 log-mel dB (transformers' `spectrogram`)."""
        half = self.fft_window_size // 2
        padded = np.pad(windows, ((0, 0), (half, half)), mode="reflect")
        frames = np.lib.stride_tricks.sliding_window_view(padded, self.fft_window_size, axis=-1)[:, :: self.hop_length]
        spectrum = np.fft.rfft(frames * _hann(self.fft_window_size), axis=-1).astype(np.complex64)
        power = np.abs(spectrum, dtype=np.float64) ** 2
        mel = np.maximum(MEL_FLOOR, power @ _slaney_filters(self._filter_key))
        return (10.0 * np.log10(mel)).astype(np.float32)

    @property
    def _filter_key(self) -> tuple:
        return self.fft_window_size // 2 + 1, self.feature_size, self.frequency_min, self.frequency_max, self.sampling_rate

    def __call__(self, waveforms: np.ndarray | Sequence[np.ndarray], *, sampling_rate: int) -> np.ndarray:
        """Clips of one length at `sampling_rate` -> `input_features` (B, n, 1, frames, feature_size) float32.

        Row b, window w is what `ClapModel.get_audio_features` takes for that window; n = 1 for clips of at most one
        window, where `features[:, 0]` equals transformers' `ClapFeatureExtractor(...).input_features`.
        """
        if sampling_rate != self.sampling_rate:
            raise ValueError(
                f"{WHAT}: audio at {sampling_rate} Hz, the extractor takes {self.sampling_rate} Hz; resample first "
                f"(litefocus_jax.features.feature_extraction_clap.resample)."
            )
        clips = [np.asarray(w) for w in (waveforms if isinstance(waveforms, (list, tuple)) else np.atleast_2d(waveforms))]
        if not clips or len({c.shape for c in clips}) != 1:
            raise ValueError(f"{WHAT}: give one or more 1-D clips of one length, got shapes {[c.shape for c in clips]}.")
        windows = np.stack([self.windows(c) for c in clips])  # (B, n, M)
        b, n, m = windows.shape
        return self.log_mel(windows.reshape(b * n, m)).reshape(b, n, 1, self.frames, self.feature_size)


@functools.lru_cache(maxsize=8)
def _hann(size: int) -> np.ndarray:
    """Periodic Hann window (transformers `window_function(size, "hann")`)."""
    return np.hanning(size + 1)[:-1]


def _hz_to_slaney_mel(freq):
    freq = np.asarray(freq, np.float64)
    logstep = 27.0 / np.log(6.4)
    return np.where(freq >= 1000.0, 15.0 + np.log(np.maximum(freq, 1e-300) / 1000.0) * logstep, 3.0 * freq / 200.0)


def _slaney_mel_to_hz(mels):
    mels = np.asarray(mels, np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(logstep * (mels - 15.0)), 200.0 * mels / 3.0)


@functools.lru_cache(maxsize=8)
def _slaney_filters(key: tuple) -> np.ndarray:
    """(n_freq, n_mels) float64 Slaney mel filters with area normalisation (transformers `mel_filter_bank(norm="slaney",
    mel_scale="slaney")` = `librosa.filters.mel`): triangles in Hz between edges equally spaced in Slaney mel."""
    n_freq, n_mels, fmin, fmax, rate = key
    edges = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(fmin), _hz_to_slaney_mel(fmax), n_mels + 2))
    fft_freqs = np.linspace(0, rate // 2, n_freq)
    slopes = edges[None, :] - fft_freqs[:, None]
    gaps = np.diff(edges)
    down, up = -slopes[:, :-2] / gaps[:-1], slopes[:, 2:] / gaps[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


def resample(waveforms: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """(B, L) or (L,) float -> (B, ceil(L * target / orig)) float32 with soxr "HQ", row by row: bit-identical to
    `librosa.resample(y, orig_sr=..., target_sr=...)` (default res_type "soxr_hq", `fix=True`) on float32 input."""
    import soxr

    x = np.asarray(waveforms, np.float32)
    if x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise ValueError(f"resample: expected (L,) or (B, L) audio with L > 0, got shape {x.shape}.")
    if orig_sr == target_sr:
        return x.copy()
    length = math.ceil(x.shape[-1] * target_sr / orig_sr)
    rows = np.atleast_2d(x)
    out = np.zeros((rows.shape[0], length), np.float32)
    for i, row in enumerate(rows):
        y = soxr.resample(row, orig_sr, target_sr, quality="HQ")[:length]
        out[i, : y.shape[0]] = y
    return out if x.ndim == 2 else out[0]
