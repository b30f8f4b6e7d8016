"""SpeechT5HifiGan vocoder in Flax NNX (transformers `models/speecht5/modeling_speecht5.py`).

Channels-last (NWC) throughout: the log-mel input (B, T, n_mels) is already time-major, so unlike torch
no transpose is needed. Attribute names mirror the torch module tree (`conv_pre`, `upsampler.{i}`,
`resblocks.{r}.convs1.{j}`, `conv_post`, buffers `mean`/`scale`), so checkpoint keys map one to one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.models.layers import functional, kernel_init, ones_init, zeros_init
from litefocus_jax.weights.state import (
    Path_,
    abstract_params,
    map_converted_state,
    map_torch_state,
    read_config,
)

MODEL_TYPE = "speecht5_hifigan"
WHAT = "SpeechT5HifiGan vocoder"
# Slope of the final activation: transformers calls `nn.functional.leaky_relu(h)` without a slope there,
# i.e. torch's default 0.01, not config.leaky_relu_slope (AUDIOLDM2.md pitfall 8).
FINAL_LEAKY_RELU_SLOPE = 0.01


class Buffer(nnx.Variable):
    """A non-trainable tensor of the checkpoint (torch `register_buffer`), e.g. the mel `mean`/`scale`."""


@dataclasses.dataclass(frozen=True)
class HifiGanConfig:
    """The SpeechT5HifiGan geometry, built from a transformers `vocoder/config.json` dict by `from_hf`.

    Attributes:
      model_in_dim: mel bins of the input (64 for AudioLDM2).
      sampling_rate: output sample rate in Hz (16000).
      upsample_initial_channel: channels after `conv_pre` (1024); halved by every upsampling stage.
      upsample_rates / upsample_kernel_sizes: ConvTranspose1d stride and kernel per stage.
      resblock_kernel_sizes / resblock_dilation_sizes: the parallel residual blocks of every stage.
      leaky_relu_slope: slope of every LeakyReLU except the final one (which is torch's default 0.01).
      normalize_before: apply `(mel - mean) / scale` with the checkpoint buffers first (False for AudioLDM2).
    """

    model_in_dim: int = 80
    sampling_rate: int = 16000
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (4, 4, 4, 4)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 8, 8)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_relu_slope: float = 0.1
    normalize_before: bool = True

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> HifiGanConfig:
        """Validate a transformers SpeechT5HifiGan config dict; errors name the key and the fix.

        Keys that are not SpeechT5HifiGan options (generic PretrainedConfig keys such as `architectures`,
        `torch_dtype`) are ignored; missing options take transformers' defaults.
        """
        model_type = config.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(
                f"vocoder config: model_type is {model_type!r}, expected {MODEL_TYPE!r}: this is not a SpeechT5HifiGan "
                "config (point at the snapshot's vocoder/ folder)."
            )
        defaults = cls()
        get = lambda key: config.get(key, getattr(defaults, key))  # noqa: E731
        try:
            cfg = cls(
                model_in_dim=int(get("model_in_dim")),
                sampling_rate=int(get("sampling_rate")),
                upsample_initial_channel=int(get("upsample_initial_channel")),
                upsample_rates=tuple(int(v) for v in get("upsample_rates")),
                upsample_kernel_sizes=tuple(int(v) for v in get("upsample_kernel_sizes")),
                resblock_kernel_sizes=tuple(int(v) for v in get("resblock_kernel_sizes")),
                resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in get("resblock_dilation_sizes")),
                leaky_relu_slope=float(get("leaky_relu_slope")),
                normalize_before=bool(get("normalize_before")),
            )
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"vocoder config: a value has the wrong type ({e}); compare with transformers' SpeechT5HifiGanConfig."
            ) from e
        cfg._check()
        return cfg

    def _check(self):
        n = len(self.upsample_rates)
        if n == 0 or len(self.upsample_kernel_sizes) != n:
            raise ValueError(
                f"vocoder config: upsample_rates {self.upsample_rates} and upsample_kernel_sizes "
                f"{self.upsample_kernel_sizes} must be non-empty and of equal length."
            )
        if not self.resblock_kernel_sizes or len(self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes):
            raise ValueError(
                f"vocoder config: resblock_kernel_sizes {self.resblock_kernel_sizes} and resblock_dilation_sizes "
                f"{self.resblock_dilation_sizes} must be non-empty and of equal length."
            )
        for i, (u, k) in enumerate(zip(self.upsample_rates, self.upsample_kernel_sizes)):
            if u < 1 or k < u:
                raise ValueError(
                    f"vocoder config: stage {i} has upsample_rate {u} and kernel {k}; need 1 <= rate <= kernel "
                    "(torch padding (kernel - rate) // 2 must be >= 0)."
                )
        if self.upsample_initial_channel % 2**n:
            raise ValueError(
                f"vocoder config: upsample_initial_channel {self.upsample_initial_channel} must be divisible by "
                f"2**{n} (one halving per upsampling stage)."
            )
        if self.model_in_dim < 1:
            raise ValueError(f"vocoder config: model_in_dim must be positive, got {self.model_in_dim}.")

    @property
    def hop_length(self) -> int:
        """Nominal output samples per mel frame: prod(upsample_rates) (160 for AudioLDM2)."""
        return math.prod(self.upsample_rates)

    def num_samples(self, frames: int) -> int:
        """Exact output length for `frames` mel frames (160*T + 32 for AudioLDM2: stage k16/u5 adds one)."""
        n = frames
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            n = (n - 1) * u - 2 * ((k - u) // 2) + k
        return n


def conv1d(in_channels: int, out_channels: int, kernel: int, *, dilation: int = 1, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """torch.nn.Conv1d(in, out, kernel, dilation=d, padding=(kernel*d - d)//2) on NWC input (length kept for odd k)."""
    pad = (kernel * dilation - dilation) // 2
    return nnx.Conv(
        in_channels,
        out_channels,
        (kernel,),
        padding=((pad, pad),),
        kernel_dilation=(dilation,),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
        kernel_init=kernel_init,
        bias_init=zeros_init,
    )


def conv_transpose1d(
    in_channels: int, out_channels: int, kernel: int, stride: int, *, dtype, rngs: nnx.Rngs
) -> nnx.ConvTranspose:
    """torch.nn.ConvTranspose1d(in, out, kernel, stride, padding=(kernel - stride)//2) on NWC input.

    The kernel is stored (k, C_in, C_out) *flipped* along k (see `convtranspose1d_layout`); with explicit padding
    (k-1-p, k-1-p) `lax.conv_transpose` then gives torch's (L-1)*s - 2p + k samples exactly ("SAME" is off by
    one when k - s is odd, e.g. k16/s5).
    """
    p = (kernel - stride) // 2
    return nnx.ConvTranspose(
        in_channels,
        out_channels,
        (kernel,),
        (stride,),
        padding=((kernel - 1 - p, kernel - 1 - p),),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
        kernel_init=kernel_init,
        bias_init=zeros_init,
    )


def convtranspose1d_layout(w: np.ndarray) -> np.ndarray:
    """torch ConvTranspose1d weight (C_in, C_out, k) -> flipped (k, C_in, C_out) for `lax.conv_transpose`."""
    return np.ascontiguousarray(np.flip(w.transpose(2, 0, 1), 0))


class HifiGanResidualBlock(nnx.Module):
    """For each dilation d: x + convs2(lrelu(convs1_d(lrelu(x))))."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], slope: float, *, dtype, rngs):
        self.slope = slope
        self.convs1 = nnx.List([conv1d(channels, channels, kernel, dilation=d, dtype=dtype, rngs=rngs) for d in dilations])
        self.convs2 = nnx.List([conv1d(channels, channels, kernel, dtype=dtype, rngs=rngs) for _ in dilations])

    def __call__(self, x: jax.Array) -> jax.Array:
        """x (B, L, C) -> (B, L, C)."""
        for conv1, conv2 in zip(self.convs1, self.convs2):
            h = conv1(jax.nn.leaky_relu(x, self.slope))
            x = x + conv2(jax.nn.leaky_relu(h, self.slope))
        return x


class SpeechT5HifiGan(nnx.Module):
    """HiFi-GAN generator: mel (B, T, n_mels) -> waveform (B, num_samples(T)) float32 in [-1, 1]."""

    def __init__(self, config: HifiGanConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        c0 = config.upsample_initial_channel
        self.conv_pre = conv1d(config.model_in_dim, c0, 7, dtype=dtype, rngs=rngs)
        self.upsampler = nnx.List(
            [
                conv_transpose1d(c0 // 2**i, c0 // 2 ** (i + 1), k, u, dtype=dtype, rngs=rngs)
                for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes))
            ]
        )
        self.resblocks = nnx.List(
            [
                HifiGanResidualBlock(c0 // 2 ** (i + 1), k, d, config.leaky_relu_slope, dtype=dtype, rngs=rngs)
                for i in range(len(config.upsample_rates))
                for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes)
            ]
        )
        self.conv_post = conv1d(c0 // 2 ** len(config.upsample_rates), 1, 7, dtype=dtype, rngs=rngs)
        if config.normalize_before:
            # Only a model that uses them owns them; otherwise the checkpoint's copies are ignored (VOCODER_IGNORE).
            self.mean = Buffer(zeros_init(rngs.params(), (config.model_in_dim,), dtype))
            self.scale = Buffer(ones_init(rngs.params(), (config.model_in_dim,), dtype))

    def __call__(self, mel: jax.Array) -> jax.Array:
        """Synthesize audio.

        Args:
          mel: (B, T, model_in_dim) log-mel, time-major (the VAE output with its channel axis squeezed), or
            (T, model_in_dim) unbatched.

        Returns:
          float32 waveform (B, config.num_samples(T)) (or (samples,) unbatched); the network itself runs in the
          module dtype.
        """
        mel = jnp.asarray(mel)
        cfg = self.config
        if mel.ndim not in (2, 3) or mel.shape[-1] != cfg.model_in_dim:
            raise ValueError(
                f"vocoder: mel must be (B, T, {cfg.model_in_dim}) time-major, got shape {tuple(mel.shape)}; squeeze the "
                "VAE's channel axis (B, T, F, 1) -> (B, T, F), and transpose a (B, F, T) spectrogram."
            )
        batched = mel.ndim == 3
        h = (mel if batched else mel[None]).astype(self.dtype)
        if cfg.normalize_before:
            h = (h - self.mean[...]) / self.scale[...]
        h = self.conv_pre(h)
        n = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.upsampler):
            h = up(jax.nn.leaky_relu(h, cfg.leaky_relu_slope))
            res = self.resblocks[i * n](h)
            for j in range(1, n):
                res = res + self.resblocks[i * n + j](h)
            h = res / n
        h = jnp.tanh(self.conv_post(jax.nn.leaky_relu(h, FINAL_LEAKY_RELU_SLOPE)))
        wave = h[..., 0].astype(jnp.float32)
        return wave if batched else wave[0]

    def functional(self) -> tuple[Callable[..., jax.Array], dict]:
        """A pure face for `jax.jit`: `(apply, params)` with `apply(params, mel) -> waveform`."""
        return functional(self)


# ---------------------------------------------------------------------------------------------- weights


def vocoder_ignore(cfg: HifiGanConfig) -> tuple[str, ...]:
    """Checkpoint tensors deliberately unused: the `mean`/`scale` buffers when normalize_before is off.

    (transformers always registers and saves them; with normalize_before=false they are zeros/ones and never read.)
    """
    return () if cfg.normalize_before else (r"mean", r"scale")


VOCODER_LAYOUTS = {r"upsampler\.\d+\.weight": convtranspose1d_layout}

_WEIGHT_NORM = re.compile(r"(.*)\.(?:weight_(g|v)|parametrizations\.weight\.original([01]))")


def fold_weight_norm(source: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replace weight-norm pairs by the plain weight w = g * v / ||v|| (norm over every axis but 0).

    Accepts the legacy `X.weight_g`/`X.weight_v` names and the parametrization names
    `X.parametrizations.weight.original0` (g) / `original1` (v); for ConvTranspose1d axis 0 is C_in, as in
    torch's `weight_norm(dim=0)`. A lone half of a pair is an error.
    """
    out, pairs = {}, {}
    for key, value in source.items():
        m = _WEIGHT_NORM.fullmatch(key)
        if m is None:
            out[key] = value
            continue
        part = "g" if (m.group(2) == "g" or m.group(3) == "0") else "v"
        pairs.setdefault(m.group(1), {})[part] = (key, np.asarray(value))
    for prefix, parts in pairs.items():
        if set(parts) != {"g", "v"}:
            ((key, _),) = parts.values()
            raise ValueError(f"{WHAT}: weight-norm tensor {key!r} has no partner (need both g and v of {prefix!r}).")
        if f"{prefix}.weight" in out:
            raise ValueError(f"{WHAT}: {prefix!r} has both a plain weight and weight-norm g/v tensors; keep one form.")
        g, v = parts["g"][1], parts["v"][1]
        v64 = v.astype(np.float64)
        norm = np.sqrt((v64**2).sum(axis=tuple(range(1, v.ndim)), keepdims=True))
        out[f"{prefix}.weight"] = (v64 * (g.astype(np.float64).reshape(norm.shape) / norm)).astype(v.dtype)
    return out


def _builder(cfg: HifiGanConfig, dtype, seed: int = 0):
    return lambda: SpeechT5HifiGan(cfg, dtype=dtype, rngs=nnx.Rngs(seed))


def convert_vocoder_state(
    source: Mapping[str, np.ndarray], config: Mapping, *, converted: bool = False
) -> dict[Path_, np.ndarray]:
    """transformers SpeechT5HifiGan state dict (or a converted one) -> flat {NNX path: numpy}, strictly validated.

    Weight norm is folded first (`fold_weight_norm`); ConvTranspose1d kernels are flipped into (k, C_in, C_out).
    """
    cfg = HifiGanConfig.from_hf(config)
    _, targets = abstract_params(_builder(cfg, jnp.float32))
    if converted:
        return map_converted_state(source, targets, WHAT)
    return map_torch_state(fold_weight_norm(source), targets, ignore=vocoder_ignore(cfg), layouts=VOCODER_LAYOUTS, what=WHAT)


def load_vocoder(path: str | os.PathLike, *, dtype=jnp.float32) -> SpeechT5HifiGan:
    """Load the SpeechT5HifiGan vocoder.

    Args:
      path: a transformers `vocoder/` folder (config.json + model.safetensors), a snapshot root holding one, or
        the converted form.
      dtype: parameter and compute dtype (jnp.float32 or jnp.bfloat16); the waveform is always float32.

    Returns:
      The module: `vocoder(mel (B, T, n_mels)) -> (B, config.num_samples(T))` float32.
    """
    from litefocus_jax.weights.loading import load_module, resolve_component

    folder = resolve_component(path, "vocoder")
    cfg = HifiGanConfig.from_hf(read_config(folder))
    return load_module(
        folder,
        _builder(cfg, dtype),
        dtype=dtype,
        what=WHAT,
        ignore=vocoder_ignore(cfg),
        layouts=VOCODER_LAYOUTS,
        prepare=lambda source, converted: source if converted else fold_weight_norm(source),
    )


def init_vocoder(config: Mapping, *, seed: int = 0, dtype=jnp.float32) -> SpeechT5HifiGan:
    """The same module with random weights, from a transformers vocoder config dict (benchmarks, tests)."""
    return _builder(HifiGanConfig.from_hf(config), dtype, seed)()
