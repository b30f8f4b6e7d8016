"""Audio files -> log-mel spectrograms -> AudioLDM2 VAE latents (the data side of fine-tuning).

The log-mel is the one AudioLDM2 was trained on (`mel_spectrogram_train` of the AudioLDM training code, a
HiFi-GAN-style TacotronSTFT): 16 kHz mono, reflect-pad (n_fft - hop) / 2 samples on both sides, STFT with
a periodic Hann window and center=False, magnitude (not power), a Slaney-scale Slaney-normalised mel basis
(librosa's default), then log(max(mel, 1e-5)). With hop 160 a waveform of L samples (L a multiple of 160)
gives exactly L / 160 frames, so 10.24 s -> 1024 mel frames -> 256 latent frames.

Before the mel the training code removes the mean and scales the peak to 0.5 (`normalize_waveform`); the
latents are the VAE posterior mean (or a sample) times `vae.config.scaling_factor`, channels-last
(B, T_mel / 4, 64 / 4, 8).

No resampling: a file that is not 16 kHz is refused with a message saying how to convert it, because a
quick resampler here would silently alias and shift the data away from what the model saw in training.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SAMPLING_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
CAPTIONS_FILE = "captions.jsonl"


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """The AudioLDM2 log-mel front end (16k_64 preprocessing config of the AudioLDM training code).

    Attributes:
      sampling_rate: Hz; input audio must already be at this rate.
      n_fft / win_length: FFT size and periodic Hann window length (equal here: no window padding).
      hop_length: samples per frame (160 = 10 ms).
      n_mels: mel bands (64; the VAE halves them twice to the UNet's 16).
      fmin / fmax: mel basis range in Hz.
      log_floor: the clamp before the log (1e-5, i.e. a silence floor of log(1e-5) = -11.51).
      peak: normalize_waveform scales the peak amplitude to this (0.5 in training).
      peak_eps: added to the peak before dividing, so silence stays finite.
    """

    sampling_rate: int = SAMPLING_RATE
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = 1e-5
    peak: float = 0.5
    peak_eps: float = 1e-8

    def __post_init__(self):
        if self.win_length != self.n_fft:
            raise ValueError(
                f"MelConfig: win_length {self.win_length} != n_fft {self.n_fft} is not supported (AudioLDM2 uses 1024 for both)."
            )
        if not 0 < self.hop_length <= self.n_fft or (self.n_fft - self.hop_length) % 2:
            raise ValueError(
                f"MelConfig: need 0 < hop_length <= n_fft with n_fft - hop_length even, got {self.hop_length}, {self.n_fft}."
            )
        if not 0 <= self.fmin < self.fmax <= self.sampling_rate / 2:
            raise ValueError(f"MelConfig: need 0 <= fmin < fmax <= sampling_rate / 2, got {self.fmin}, {self.fmax}.")
        if self.log_floor <= 0 or self.peak_eps <= 0:
            raise ValueError("MelConfig: log_floor and peak_eps must be > 0.")

    @property
    def pad(self) -> int:
        """Reflect padding on each side: (n_fft - hop) / 2 = 432 samples."""
        return (self.n_fft - self.hop_length) // 2

    def num_frames(self, samples: int) -> int:
        """Mel frames of a waveform of `samples` samples (= samples // hop for a multiple of hop)."""
        return (samples + 2 * self.pad - self.n_fft) // self.hop_length + 1


# ---------------------------------------------------------------------------------------------- mel basis


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (librosa htk=False)."""
    hz = np.asarray(hz, np.float64)
    linear = hz * 3.0 / 200.0
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * 200.0 / 3.0)


def mel_filter_bank(cfg: MelConfig = MelConfig()) -> np.ndarray:
    """float32 (n_mels, n_fft // 2 + 1) triangular Slaney-normalised filters, librosa.filters.mel's defaults.

    Built in float64 on the host and cast once, as librosa does: it is a constant of the jitted mel.
    """
    fft_freqs = np.arange(cfg.n_fft // 2 + 1) * (cfg.sampling_rate / cfg.n_fft)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(cfg.fmin), _hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney norm: each filter has unit area
    return weights.astype(np.float32)


def hann_window(length: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window default, scipy sym=False) as float32 (length,)."""
    n = np.arange(length, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- log-mel


def log_mel_spectrogram(waveform: jax.Array, cfg: MelConfig = MelConfig()) -> jax.Array:
    """AudioLDM2's training log-mel of a waveform; jittable (the shapes are static per input length).

    Args:
      waveform: float (L,) or (B, L) at `cfg.sampling_rate`, L > (n_fft - hop) / 2 (reflect padding).
      cfg: the front end.

    Returns:
      float32 (num_frames(L), n_mels) or (B, num_frames(L), n_mels): time-major, as the VAE takes it.
    """
    x = jnp.asarray(waveform, jnp.float32)
    if x.ndim not in (1, 2):
        raise ValueError(f"log_mel_spectrogram: waveform must be (L,) or (B, L), got shape {tuple(x.shape)}.")
    length = x.shape[-1]
    if length <= cfg.pad:
        raise ValueError(f"log_mel_spectrogram: {length} samples is too short; reflect padding needs more than {cfg.pad}.")
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(cfg.pad, cfg.pad)], mode="reflect")
    frames = cfg.num_frames(length)
    index = np.arange(frames)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)[None, :]
    spectrum = jnp.fft.rfft(padded[..., index] * hann_window(cfg.win_length), n=cfg.n_fft, axis=-1)
    mel = jnp.abs(spectrum) @ jnp.asarray(mel_filter_bank(cfg).T)
    return jnp.log(jnp.maximum(mel, cfg.log_floor))


def normalize_waveform(waveform: np.ndarray, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """Remove the mean and scale the peak to `cfg.peak` (the training code's normalize_wav); float32."""
    w = np.asarray(waveform, np.float64)
    w = w - w.mean()
    return (w / (np.abs(w).max() + cfg.peak_eps) * cfg.peak).astype(np.float32)


def prepare_waveform(waveform: np.ndarray, samples: int, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """The training code's order: crop to `samples`, normalize, then pad with trailing zeros (silence). float32 (samples,)."""
    w = normalize_waveform(np.asarray(waveform)[:samples], cfg)
    return np.pad(w, (0, samples - w.shape[0]))


# ---------------------------------------------------------------------------------------------- files


def check_audio_files(paths: Sequence[str | os.PathLike], cfg: MelConfig = MelConfig()) -> list[float]:
    """Read every file's header; return the durations in seconds. Raises before any audio is decoded.

    Raises FileNotFoundError for a missing file, ValueError for an unreadable file or a sample rate other
    than `cfg.sampling_rate` (the message says how to resample).
    """
    import soundfile as sf

    durations = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such audio file.")
        try:
            info = sf.info(os.fspath(path))
        except Exception as e:  # soundfile raises its own error type for unknown formats
            raise ValueError(f"{path}: not a readable audio file ({type(e).__name__}: {e}).") from e
        if info.samplerate != cfg.sampling_rate:
            raise ValueError(
                f"{path}: sample rate {info.samplerate} Hz, but AudioLDM2 works at {cfg.sampling_rate} Hz and this library "
                f"does not resample. Resample to 16 kHz first, e.g. `ffmpeg -i in.wav -ar 16000 -ac 1 out.wav` or "
                f"`sox in.wav -r 16000 out.wav`."
            )
        if info.frames <= cfg.pad:
            raise ValueError(f"{path}: {info.frames} samples is too short (need more than {cfg.pad}).")
        durations.append(info.frames / info.samplerate)
    return durations


def load_audio(path: str | os.PathLike, cfg: MelConfig = MelConfig()) -> np.ndarray:
    """A float32 mono (L,) waveform in [-1, 1]; multi-channel files are averaged. Must be 16 kHz."""
    import soundfile as sf

    check_audio_files([path], cfg)
    data, _ = sf.read(os.fspath(path), dtype="float32", always_2d=True)
    return data.mean(axis=1)


def read_audio_folder(folder: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """(audio files, captions) of a folder, sorted by name.

    Captions come from `captions.jsonl` in the folder (lines `{"file": "a.wav", "caption": "..."}`) when it
    exists, every audio file needing a line; otherwise from the file names ("dog_barking.wav" -> "dog barking").
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of audio files.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no audio files ({', '.join(AUDIO_SUFFIXES)}).")
    table = folder / CAPTIONS_FILE
    if not table.is_file():
        return files, [p.stem.replace("_", " ").replace("-", " ") for p in files]
    captions = {}
    for number, line in enumerate(table.read_text().splitlines(), 1):
        if line.strip():
            try:
                entry = json.loads(line)
                captions[entry["file"]] = str(entry["caption"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f'{table} line {number}: expected {{"file": ..., "caption": ...}} ({e}).') from e
    missing = [p.name for p in files if p.name not in captions]
    if missing:
        raise ValueError(f"{table} has no caption for {missing}; add a line per audio file.")
    return files, [captions[p.name] for p in files]


# ---------------------------------------------------------------------------------------------- latents


def make_latent_encoder(vae, cfg: MelConfig = MelConfig()) -> Callable[..., jax.Array]:
    """A jitted `encode(waveforms (B, L), key=None) -> latents (B, T, n_mels / s, C)` for an AutoencoderKL.

    L must be a multiple of hop * s (s = `vae.config.scale_factor`, 4: 640 samples = one latent frame), so
    the mel has a whole number of latent frames (T = L / 640), as the pipeline's lengths are. key None: the
    posterior mean; a jax.random key: a posterior sample. Both are multiplied by the scaling factor.
    """
    if vae.encoder is None:
        raise ValueError("make_latent_encoder: this VAE has no encoder; load it with load_vae(..., with_encoder=True).")
    scale = vae.config.scale_factor
    if cfg.n_mels % scale:
        raise ValueError(f"make_latent_encoder: n_mels {cfg.n_mels} is not divisible by the VAE scale factor {scale}.")
    if vae.config.in_channels != 1:
        raise ValueError(f"make_latent_encoder: the VAE takes {vae.config.in_channels} channels; AudioLDM2's takes one mel.")
    apply, params = vae.functional("encode")
    factor = float(vae.config.scaling_factor)

    @jax.jit
    def encode(params, waveforms, key):
        posterior = apply(params, log_mel_spectrogram(waveforms, cfg)[..., None])
        z = posterior.mean if key is None else posterior.sample(key)
        return z * factor

    def run(waveforms, key=None):
        w = jnp.asarray(waveforms, jnp.float32)
        frame = cfg.hop_length * scale
        if w.ndim != 2 or w.shape[1] % frame or w.shape[1] == 0:
            raise ValueError(
                f"encode: waveforms must be (B, L) with L a positive multiple of {frame} samples (one latent frame), "
                f"got shape {tuple(w.shape)}; pad or crop with prepare_waveform."
            )
        return encode(params, w, key)

    return run


def latent_samples(seconds: float, cfg: MelConfig = MelConfig(), vae_scale_factor: int = 4) -> int:
    """Samples of `seconds` of audio rounded up to a whole latent frame (640 samples = 0.04 s at 16 kHz)."""
    frame = cfg.hop_length * vae_scale_factor
    return max(1, int(np.ceil(round(seconds * cfg.sampling_rate, 6) / frame))) * frame


def audio_files_to_latents(
    paths: Sequence[str | os.PathLike],
    vae,
    *,
    seconds: float | None = None,
    cfg: MelConfig = MelConfig(),
    batch_size: int = 8,
    key: jax.Array | None = None,
) -> np.ndarray:
    """Encode audio files to diffusion latents, every file to the same length.

    Args:
      paths: 16 kHz audio files (checked, headers only, before anything is decoded or compiled).
      vae: an AutoencoderKL with its encoder (`load_vae(path, with_encoder=True)`).
      seconds: clip length; longer files are cropped, shorter ones padded with silence. None: the longest
        file. Rounded up to a whole latent frame (0.04 s).
      cfg: the mel front end.
      batch_size: files per VAE call.
      key: None for posterior means; a key for samples (folded with the batch index).

    Returns:
      float32 (N, T, n_mels / 4, latent_channels), T = 25 latent frames per second.
    """
    if not paths:
        raise ValueError("audio_files_to_latents: no files given.")
    if seconds is not None and not seconds > 0:
        raise ValueError(f"audio_files_to_latents: seconds must be > 0, got {seconds!r}.")
    durations = check_audio_files(paths, cfg)
    scale = vae.config.scale_factor
    samples = latent_samples(seconds if seconds is not None else max(durations), cfg, scale)
    encode = make_latent_encoder(vae, cfg)
    out = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        waves = np.stack([prepare_waveform(load_audio(p, cfg), samples, cfg) for p in chunk])
        sub = None if key is None else jax.random.fold_in(key, start)
        out.append(np.asarray(encode(waves, sub), np.float32))
    return np.concatenate(out)
