"""VGGish (harritaylor/torchvggish `vggish.py: VGG`) in Flax NNX, as audioldm_eval's FAD uses it, plus its front end.

Front end (`vggish_input.waveform_to_examples`, `mel_features.py`; host NumPy float64 as the reference):
  mono 16 kHz waveform -> 400-sample frames, hop 160, no padding -> periodic Hann -> |rfft 512|
  -> HTK-mel matrix (64 bands, 125-7500 Hz, triangles in the mel domain, DC row zeroed) -> ln(mel + 0.01)
  -> examples of 96 frames, hop 96, tail dropped: (n, 96, 64) float32 (n = 0 below 15,600 samples).

Network (channels-last): conv3x3 + ReLU blocks 64 | M | 128 | M | 256, 256 | M | 512, 512 | M -> (n, 6, 4, 512)
-> flatten in (H, W, C) order (torch permutes NCHW to NHWC first) -> embeddings: Linear 12288->4096, ReLU,
Linear 4096->4096, ReLU, Linear 4096->128 [, ReLU]. audioldm_eval drops the last ReLU and the PCA postprocessor
(`use_pca=False, use_activation=False`), so `__call__` returns the 128-d pre-ReLU output (`final_relu=False`).

Weights: the official `vggish-10086976.pth` (a flat torch state dict, 18 tensors) is read only by
`convert_vggish_checkpoint` (torch.load(weights_only=True)); everything else loads the converted safetensors.
Attribute names mirror torch: `features.{0,3,6,8,11,13}` (Sequential indices) and `embeddings.{0,2,4}`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.models.layers import conv2d, linear

WHAT = "VGGish"
SAMPLE_RATE = 16000
WINDOW, HOP, FFT = 400, 160, 512  # 25 ms frames, 10 ms hop
NUM_BANDS, EXAMPLE_FRAMES = 64, 96  # 0.96 s examples
MEL_MIN_HZ, MEL_MAX_HZ, LOG_OFFSET = 125.0, 7500.0, 0.01
MIN_SAMPLES = WINDOW + HOP * (EXAMPLE_FRAMES - 1)  # 15,600: one example
CONV_INDICES = (0, 3, 6, 8, 11, 13)  # torch Sequential indices of the convolutions (ReLU/MaxPool in between)
POOL_AFTER = (0, 3, 8, 13)  # a 2x2 max pool follows these convolutions


@dataclasses.dataclass(frozen=True)
class VGGishConfig:
    """Widths (the official network: defaults); smaller ones give tiny random networks for tests."""

    channels: tuple[int, ...] = (64, 128, 256, 256, 512, 512)
    hidden: int = 4096
    embedding: int = 128
    final_relu: bool = False  # audioldm_eval's FAD: off

    @property
    def flat(self) -> int:
        return self.channels[-1] * (EXAMPLE_FRAMES // 16) * (NUM_BANDS // 16)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"model_type": "vggish"}

    @classmethod
    def from_dict(cls, d: dict) -> VGGishConfig:
        keys = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if k == "channels" else v for k, v in d.items() if k in keys})


class VGGish(nnx.Module):
    """`(examples (n, 96, 64) log-mel) -> (n, embedding)`; torch input is (n, 1, 96, 64), here channels-last."""

    def __init__(self, cfg: VGGishConfig = VGGishConfig(), *, dtype=jnp.float32, rngs: nnx.Rngs):
        if len(cfg.channels) != len(CONV_INDICES):
            raise ValueError(f"{WHAT}: channels needs {len(CONV_INDICES)} widths, got {cfg.channels}.")
        self.config = cfg
        convs, cin = {}, 1
        for i, cout in zip(CONV_INDICES, cfg.channels):
            convs[i] = conv2d(cin, cout, 3, dtype=dtype, rngs=rngs)
            cin = cout
        # a list indexed like torch's Sequential; the ReLU / MaxPool slots hold no parameters
        self.features = nnx.List([convs.get(i) for i in range(CONV_INDICES[-1] + 1)])
        self.embeddings = nnx.List(
            [
                linear(cfg.flat, cfg.hidden, dtype=dtype, rngs=rngs),
                None,
                linear(cfg.hidden, cfg.hidden, dtype=dtype, rngs=rngs),
                None,
                linear(cfg.hidden, cfg.embedding, dtype=dtype, rngs=rngs),
            ]
        )

    def __call__(self, examples: jax.Array) -> jax.Array:
        x = examples[..., None].astype(self.features[0].kernel.dtype)
        for i in CONV_INDICES:
            x = jax.nn.relu(self.features[i](x))
            if i in POOL_AFTER:
                x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)  # (H, W, C) order = torch's permute-then-flatten
        x = jax.nn.relu(self.embeddings[0](x))
        x = jax.nn.relu(self.embeddings[2](x))
        x = self.embeddings[4](x)
        return jax.nn.relu(x) if self.config.final_relu else x


# ---------------------------------------------------------------------------------------------- front end


def _hz_to_mel(f):
    return 1127.0 * np.log(1.0 + np.asarray(f, np.float64) / 700.0)


@functools.lru_cache(maxsize=1)
def mel_matrix() -> np.ndarray:
    """(257, 64) float64: `mel_features.spectrogram_to_mel_matrix` with VGGish's parameters."""
    bins_mel = _hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT // 2 + 1))
    edges = np.linspace(_hz_to_mel(MEL_MIN_HZ), _hz_to_mel(MEL_MAX_HZ), NUM_BANDS + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    m = np.maximum(
        0.0, np.minimum((bins_mel[:, None] - lower) / (center - lower), (upper - bins_mel[:, None]) / (upper - center))
    )
    m[0, :] = 0.0
    return m


def waveform_to_examples(waveform: np.ndarray) -> np.ndarray:
    """One mono 16 kHz clip (L,) -> (n, 96, 64) float32 log-mel examples (n = 0 for clips under 15,600 samples)."""
    x = np.asarray(waveform, np.float64)
    if x.ndim != 1:
        raise ValueError(f"{WHAT}: expected one mono waveform (samples,), got shape {x.shape}.")
    if x.shape[0] < WINDOW:
        return np.zeros((0, EXAMPLE_FRAMES, NUM_BANDS), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, WINDOW)[::HOP]
    hann = 0.5 - 0.5 * np.cos(2 * np.pi / WINDOW * np.arange(WINDOW))
    log_mel = np.log(np.abs(np.fft.rfft(frames * hann, FFT)) @ mel_matrix() + LOG_OFFSET)
    n = (log_mel.shape[0] - EXAMPLE_FRAMES) // EXAMPLE_FRAMES + 1 if log_mel.shape[0] >= EXAMPLE_FRAMES else 0
    return log_mel[: n * EXAMPLE_FRAMES].reshape(n, EXAMPLE_FRAMES, NUM_BANDS).astype(np.float32)


# ---------------------------------------------------------------------------------------------- weights

TORCH_RENAME: tuple[tuple[str, str], ...] = ()  # names already mirror torch; layouts are the generic rules


def _builder(cfg: VGGishConfig, dtype, seed: int = 0):
    return lambda: VGGish(cfg, dtype=dtype, rngs=nnx.Rngs(seed))


def init_vggish(cfg: VGGishConfig = VGGishConfig(), *, seed: int = 0, dtype=jnp.float32) -> VGGish:
    """Random weights (tests; every result made with them must say so)."""
    return _builder(cfg, dtype, seed)()


def convert_vggish_state(state: dict[str, np.ndarray], cfg: VGGishConfig = VGGishConfig()) -> dict:
    """torch state dict (`vggish-10086976.pth` or torchvggish's `VGG.state_dict()`) -> flat {NNX path: numpy};
    strict: every parameter filled, every tensor used."""
    from litefocus_jax.weights.loading import convert_state

    return convert_state(state, _builder(cfg, jnp.float32), what=WHAT, rename=TORCH_RENAME)


def convert_vggish_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, cfg: VGGishConfig = VGGishConfig()) -> Path:
    """Official `vggish-10086976.pth` -> folder `dst` (config.json + litefocus_jax_model.safetensors)."""
    from litefocus_jax.weights.state import save_converted

    state = read_torch_checkpoint(src, WHAT)
    save_converted(
        Path(dst), convert_vggish_state(state, cfg), cfg.to_dict(), component="vggish", source=str(src), dtype="float32"
    )
    return Path(dst)


def vggish_from_torch_state(state: dict[str, np.ndarray], cfg: VGGishConfig = VGGishConfig(), *, dtype=jnp.float32) -> VGGish:
    """The module over a torch state dict's weights (no random initialisation; strict)."""
    from litefocus_jax.weights.state import abstract_params, cast_tree

    graphdef, _ = abstract_params(_builder(cfg, dtype))
    return nnx.merge(graphdef, cast_tree(convert_vggish_state(state, cfg), dtype))


def load_vggish(folder: str | os.PathLike, *, dtype=jnp.float32) -> VGGish:
    """A folder written by `convert_vggish_checkpoint` (safetensors only)."""
    from litefocus_jax.weights.loading import load_module

    folder = Path(folder)
    cfg = VGGishConfig.from_dict(json.loads((folder / "config.json").read_text()))
    return load_module(folder, _builder(cfg, dtype), dtype=dtype, what=WHAT)


def read_torch_checkpoint(src: str | os.PathLike, what: str, entry: str | None = None) -> dict[str, np.ndarray]:
    """An official pickled torch checkpoint -> {key: numpy}; only the conversion commands call this.

    torch.load(weights_only=True): no arbitrary code runs. `entry` picks a sub-dict ("model" in PANNs files).
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"converting the official {what} checkpoint {src} needs torch (it is a pickled torch file): "
            "pip install torch==2.13.0 (CPU wheel), convert once, then load the safetensors folder without torch."
        ) from e
    if not Path(src).is_file():
        raise FileNotFoundError(f"{what} checkpoint {src} does not exist.")
    state = torch.load(os.fspath(src), map_location="cpu", weights_only=True)
    if entry is not None:
        if not isinstance(state, dict) or entry not in state:
            raise ValueError(f"{src}: expected a dict with a {entry!r} entry (the official {what} file layout).")
        state = state[entry]
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
