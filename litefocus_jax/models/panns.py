"""PANNs Cnn14 (qiuqiangkong/audioset_tagging_cnn `models.py: Cnn14`, as audioldm_eval 0.0.3 copies it) in Flax NNX.

  waveform (B, L) -> STFT as torchlibrosa computes it: reflect-pad n_fft/2, frames every hop, dot with the stored
     DFT kernels (`spectrogram_extractor.stft.conv_real / conv_imag` = cos / -sin times the periodic Hann window),
     power re^2 + im^2 -> (B, T, n_fft/2 + 1)
  -> log-mel: power @ `logmel_extractor.melW` (librosa Slaney filters), 10 log10(max(., 1e-10)) -> (B, T, 64)
  -> `bn0` BatchNorm over the 64 mel bins (running statistics, eps 1e-5)
  -> 6 ConvBlocks, channels-last (B, T, F, C): conv3x3 (no bias) -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> 2x2 average
     pool (block 6: none); floor on odd sizes as torch's avg_pool2d
  -> mean over mel -> max over time + mean over time (B, 2048) -> `fc1` -> ReLU = embedding ("2048")
  -> `fc_audioset` (527) = logits (pre-sigmoid; audioldm_eval's "logits").

Dropout and SpecAugment act only in training and are absent. Settings: 16 kHz (n_fft 512, hop 160, 50-8000 Hz,
`Cnn14_16k_mAP=0.438.pth`) and 32 kHz (1024 / 320, 50-14000 Hz as audioldm_eval, `Cnn14_mAP=0.431.pth`; note that
frechet-audio-distance's 32 kHz model uses fmax 16000).

Weights: the official pickles are dicts whose "model" entry is the state dict (84 tensors, front end included); only
`convert_cnn14_checkpoint` reads them (torch.load(weights_only=True)); everything else loads converted safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.features.feature_extraction_clap import _slaney_filters  # librosa.filters.mel, NumPy only
from litefocus_jax.models.layers import linear
from litefocus_jax.models.vggish import read_torch_checkpoint
from litefocus_jax.utils.initializers import kernel_init, ones_init, zeros_init

WHAT = "PANNs Cnn14"
BN_EPS = 1e-5
AMIN = 1e-10  # power floor of torchlibrosa's power_to_db (ref 1, top_db None)


@dataclasses.dataclass(frozen=True)
class Cnn14Config:
    """audioldm_eval's `Cnn14(...)` arguments; `channels` smaller than the official ones give tiny test networks."""

    sample_rate: int = 16000
    window_size: int = 512
    hop_size: int = 160
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 8000.0
    classes_num: int = 527
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)

    def __post_init__(self):
        if len(self.channels) != 6 or self.window_size % 2 or not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"{WHAT}: bad config {self} (6 channel widths, even window, 0 <= fmin < fmax <= sr / 2).")

    @property
    def min_samples(self) -> int:
        """torch's reflect pad needs more than window_size / 2 samples."""
        return self.window_size // 2 + 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"model_type": "cnn14"}

    @classmethod
    def from_dict(cls, d: dict) -> Cnn14Config:
        keys = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if k == "channels" else v for k, v in d.items() if k in keys})


CNN14_16K = Cnn14Config()
CNN14_32K = Cnn14Config(sample_rate=32000, window_size=1024, hop_size=320, fmax=14000.0)
PRESETS = {16000: CNN14_16K, 32000: CNN14_32K}


def _conv3x3(cin: int, cout: int, dtype, rngs) -> nnx.Conv:
    """torch Conv2d(cin, cout, 3, padding=1, bias=False) on NHWC input."""
    return nnx.Conv(
        cin,
        cout,
        (3, 3),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        dtype=dtype,
        param_dtype=dtype,
        kernel_init=kernel_init,
        rngs=rngs,
    )


def _batch_norm(n: int, dtype, rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        n,
        use_running_average=True,
        epsilon=BN_EPS,
        dtype=dtype,
        param_dtype=dtype,
        scale_init=ones_init,
        bias_init=zeros_init,
        rngs=rngs,
    )


class FixedConv1d(nnx.Module):
    """A torch Conv1d(1, out, k, bias=False) weight used as a fixed matrix: `kernel` (k, 1, out)."""

    def __init__(self, kernel: np.ndarray, dtype):
        self.kernel = nnx.Param(jnp.asarray(kernel, dtype))


class STFT(nnx.Module):
    def __init__(self, cfg: Cnn14Config, dtype):
        n = cfg.window_size
        t = np.arange(n)[:, None] * np.arange(n // 2 + 1)[None, :]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # librosa "hann", fftbins=True
        angle = 2 * np.pi * t / n
        self.conv_real = FixedConv1d((np.cos(angle) * window[:, None])[:, None, :], dtype)
        self.conv_imag = FixedConv1d((-np.sin(angle) * window[:, None])[:, None, :], dtype)


class Spectrogram(nnx.Module):
    def __init__(self, cfg: Cnn14Config, dtype):
        self.stft = STFT(cfg, dtype)
        self.hop = cfg.hop_size

    def __call__(self, wave: jax.Array) -> jax.Array:
        """(B, L) -> (B, 1 + L // hop, n_fft / 2 + 1) power."""
        n = self.stft.conv_real.kernel.shape[0]
        x = jnp.pad(wave, ((0, 0), (n // 2, n // 2)), mode="reflect")
        count = (x.shape[1] - n) // self.hop + 1
        frames = x[:, (np.arange(count)[:, None] * self.hop + np.arange(n)[None, :])]  # (B, T, n)
        hi = jax.lax.Precision.HIGHEST
        re = jnp.matmul(frames, self.stft.conv_real.kernel[:, 0, :], precision=hi)
        im = jnp.matmul(frames, self.stft.conv_imag.kernel[:, 0, :], precision=hi)
        return re * re + im * im


class LogmelFilterBank(nnx.Module):
    def __init__(self, cfg: Cnn14Config, dtype):
        key = (cfg.window_size // 2 + 1, cfg.mel_bins, float(cfg.fmin), float(cfg.fmax), cfg.sample_rate)
        self.melW = nnx.Param(jnp.asarray(_slaney_filters(key).astype(np.float32), dtype))

    def __call__(self, power: jax.Array) -> jax.Array:
        mel = jnp.matmul(power, self.melW[...], precision=jax.lax.Precision.HIGHEST)
        return 10.0 * jnp.log10(jnp.maximum(mel, AMIN))


class ConvBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = _conv3x3(cin, cout, dtype, rngs)
        self.conv2 = _conv3x3(cout, cout, dtype, rngs)
        self.bn1 = _batch_norm(cout, dtype, rngs)
        self.bn2 = _batch_norm(cout, dtype, rngs)

    def __call__(self, x: jax.Array, pool: int) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        return nnx.avg_pool(x, (pool, pool), strides=(pool, pool)) if pool > 1 else x


class Cnn14(nnx.Module):
    """`(waveform (B, L) at cfg.sample_rate) -> (embedding (B, 2048), logits (B, 527))`."""

    def __init__(self, cfg: Cnn14Config = CNN14_16K, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.spectrogram_extractor = Spectrogram(cfg, dtype)
        self.logmel_extractor = LogmelFilterBank(cfg, dtype)
        self.bn0 = _batch_norm(cfg.mel_bins, dtype, rngs)
        cins = (1,) + cfg.channels[:-1]
        for i, (cin, cout) in enumerate(zip(cins, cfg.channels), start=1):
            setattr(self, f"conv_block{i}", ConvBlock(cin, cout, dtype=dtype, rngs=rngs))
        self.fc1 = linear(cfg.channels[-1], cfg.channels[-1], dtype=dtype, rngs=rngs)
        self.fc_audioset = linear(cfg.channels[-1], cfg.classes_num, dtype=dtype, rngs=rngs)

    def log_mel(self, wave: jax.Array) -> jax.Array:
        """(B, L) -> (B, T, mel_bins) dB, torchlibrosa's front end."""
        return self.logmel_extractor(self.spectrogram_extractor(wave.astype(self.fc1.kernel.dtype)))

    def __call__(self, wave: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = self.bn0(self.log_mel(wave))[..., None]  # (B, T, F, 1): mel bins are bn0's channels
        for i in range(1, 7):
            x = getattr(self, f"conv_block{i}")(x, 2 if i < 6 else 1)
        x = jnp.mean(x, axis=2)  # over mel -> (B, T', C)
        x = jnp.max(x, axis=1) + jnp.mean(x, axis=1)
        embedding = jax.nn.relu(self.fc1(x))
        return embedding, self.fc_audioset(embedding)


# ---------------------------------------------------------------------------------------------- weights

TORCH_RENAME: tuple[tuple[str, str], ...] = ((r"\.running_mean$", ".mean"), (r"\.running_var$", ".var"))
TORCH_IGNORE: tuple[str, ...] = (r".*\.num_batches_tracked",)


def _builder(cfg: Cnn14Config, dtype, seed: int = 0):
    return lambda: Cnn14(cfg, dtype=dtype, rngs=nnx.Rngs(seed))


def init_cnn14(cfg: Cnn14Config = CNN14_16K, *, seed: int = 0, dtype=jnp.float32) -> Cnn14:
    """Random weights (the front end is exact); every result made with them must say so."""
    return _builder(cfg, dtype, seed)()


def convert_cnn14_state(state: dict[str, np.ndarray], cfg: Cnn14Config = CNN14_16K) -> dict:
    """torch Cnn14 state dict -> flat {NNX path: numpy}; strict (every tensor used but the BN batch counters)."""
    from litefocus_jax.weights.loading import convert_state

    return convert_state(state, _builder(cfg, jnp.float32), what=WHAT, rename=TORCH_RENAME, ignore=TORCH_IGNORE)


def cnn14_from_torch_state(state: dict[str, np.ndarray], cfg: Cnn14Config = CNN14_16K, *, dtype=jnp.float32) -> Cnn14:
    """The module over a torch state dict's weights (no random initialisation; strict)."""
    from litefocus_jax.weights.state import abstract_params, cast_tree

    graphdef, _ = abstract_params(_builder(cfg, dtype))
    return nnx.merge(graphdef, cast_tree(convert_cnn14_state(state, cfg), dtype))


def convert_cnn14_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, sample_rate: int = 16000) -> Path:
    """Official `Cnn14_16k_mAP=0.438.pth` (sample_rate 16000) / `Cnn14_mAP=0.431.pth` (32000) -> folder `dst`."""
    from litefocus_jax.weights.state import save_converted

    if sample_rate not in PRESETS:
        raise ValueError(f"{WHAT}: sample_rate must be one of {sorted(PRESETS)}, got {sample_rate}.")
    cfg = PRESETS[sample_rate]
    flat = convert_cnn14_state(read_torch_checkpoint(src, WHAT, entry="model"), cfg)
    save_converted(Path(dst), flat, cfg.to_dict(), component="cnn14", source=str(src), dtype="float32")
    return Path(dst)


def load_cnn14(folder: str | os.PathLike, *, dtype=jnp.float32) -> Cnn14:
    """A folder written by `convert_cnn14_checkpoint` (safetensors only)."""
    from litefocus_jax.weights.loading import load_module

    folder = Path(folder)
    cfg = Cnn14Config.from_dict(json.loads((folder / "config.json").read_text()))
    return load_module(folder, _builder(cfg, dtype), dtype=dtype, what=WHAT)
