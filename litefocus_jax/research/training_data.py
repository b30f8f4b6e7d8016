"""Training data for `research.training`: one batch (`TrainBatch`), precomputed (latent, text) pairs with a
seeded shuffle (`LatentTextDataset`), and captions encoded by a pipeline (`encode_captions`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np


class TrainBatch(NamedTuple):
    """One batch of (latent, text) pairs, channels-last.

    latents: (B, T, F, C) clean VAE latents, already times the VAE scaling factor (F = 16, C = 8).
    encoder_hidden_states: (B, M, D) GPT2-generated states (the pipeline's `encode_prompt` third output).
    encoder_hidden_states_1: (B, L, D1) Flan-T5 states, or None for a UNet without T5 cross-attention.
    encoder_attention_mask_1: (B, L) 0/1 T5 mask, or None (all ones).
    """

    latents: Any
    encoder_hidden_states: Any
    encoder_hidden_states_1: Any = None
    encoder_attention_mask_1: Any = None


@dataclasses.dataclass(frozen=True)
class LatentTextDataset:
    """Precomputed (latent, text) pairs held as numpy, batched with a seeded per-epoch shuffle.

    Attributes:
      latents: float32 (N, T, F, C), see `litefocus_jax.features.audio.audio_files_to_latents`.
      encoder_hidden_states: (N, M, D) GPT2 states; encoder_hidden_states_1: (N, L, D1) T5 states or None;
      encoder_attention_mask_1: (N, L) or None. See `encode_captions`.
    """

    latents: np.ndarray
    encoder_hidden_states: np.ndarray
    encoder_hidden_states_1: np.ndarray | None = None
    encoder_attention_mask_1: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.latents)
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and len(value) != n:
                raise ValueError(f"LatentTextDataset: {field.name} has {len(value)} rows, latents {n}.")
        if n == 0:
            raise ValueError("LatentTextDataset: no examples.")

    def __len__(self) -> int:
        return len(self.latents)

    def take(self, rows) -> TrainBatch:
        fields = (getattr(self, f.name) for f in dataclasses.fields(self))  # not astuple: it deep-copies the arrays
        return TrainBatch(*(None if v is None else v[rows] for v in fields))

    def batches(self, batch_size: int, seed: int = 0, start_step: int = 0) -> Iterator[TrainBatch]:
        """Endless batches: epoch e is a permutation seeded by (seed, e), dropping the ragged tail so every batch
        has one shape (one compile). `start_step` skips ahead, so a resumed run sees the batches it would have."""
        if not 1 <= batch_size <= len(self):
            raise ValueError(f"batch_size must be in 1..{len(self)} (the dataset size), got {batch_size}.")
        return self._batches(batch_size, seed, start_step)

    def _batches(self, batch_size: int, seed: int, step: int) -> Iterator[TrainBatch]:
        per_epoch = len(self) // batch_size
        while True:
            epoch, k = divmod(step, per_epoch)
            order = np.random.default_rng((seed, epoch)).permutation(len(self))
            yield self.take(order[k * batch_size : (k + 1) * batch_size])
            step += 1


def encode_captions(pipe, captions: list[str], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text conditioning of `captions` with an AudioLDM2Pipeline's `encode_prompt` (no guidance), `batch_size`
    captions per call, as the pipeline encodes a list of prompts.

    Returns (GPT2 states (N, 8, D), T5 states (N, L, D1), T5 mask (N, L)), L the longest caption's tokens;
    shorter chunks are padded with mask 0, which the UNet's key bias turns into zero attention weight.
    """
    if not captions or not all(isinstance(c, str) for c in captions):
        raise ValueError("encode_captions: give a non-empty list of str.")
    chunks = []
    for start in range(0, len(captions), batch_size):
        part = list(captions[start : start + batch_size])
        chunks.append([np.asarray(a) for a in pipe.encode_prompt(part, [""] * len(part), 1, False)])
    length = max(t5.shape[1] for t5, _, _ in chunks)
    t5 = np.concatenate([np.pad(t, ((0, 0), (0, length - t.shape[1]), (0, 0))) for t, _, _ in chunks])
    mask = np.concatenate([np.pad(m, ((0, 0), (0, length - m.shape[1]))) for _, m, _ in chunks])
    return np.concatenate([g for _, _, g in chunks]), t5, mask
