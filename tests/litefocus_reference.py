"""Test-only references for LiteFocus attention, independent of the kernel's code path.

- `masked_dense_reference`: numpy float64, explicit N x N scores with per-key multiplicities.
- `released_litefocus_torch`, `ReleasedLiteFocusAttnProcessor`: the torch transcription of the released
  algorithm and its diffusers processor, re-exported from `litefocus_jax.tools.torch_reference` (where the
  benchmark's PyTorch peers use them too).
"""

from __future__ import annotations

import numpy as np

from litefocus_jax.tools.torch_reference import (
    ReleasedLiteFocusAttnProcessor,
    released_litefocus_torch,
)

__all__ = ["ReleasedLiteFocusAttnProcessor", "masked_dense_reference", "released_litefocus_torch"]


def masked_dense_reference(q, k, v, freq_bins, comp_index, duplicates, same_frequency, cross_frequency, scale):
    """LiteFocus attention from an explicit N x N score matrix, in numpy float64.

    q, k, v: (B, N, H, D), token n = t*F + f. Returns (B, N, H, D) float64.
    Official mode weights each key by its multiplicity m_ij = [j in row(i)] + #{occurrences of j in C}, which
    is the same as adding log(m_ij) to the score; exact mode uses the boolean union (m_ij > 0).
    """
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    n = q.shape[1]
    tokens = np.arange(n)
    mult = np.zeros((n, n))
    if same_frequency:
        mult += (tokens[:, None] % freq_bins) == (tokens[None, :] % freq_bins)
    if cross_frequency:
        mult += np.bincount(np.asarray(comp_index), minlength=n)[None, :]
    if duplicates == "exact":
        mult = (mult > 0).astype(np.float64)
    elif duplicates != "official":
        raise ValueError(duplicates)
    scores = np.einsum("bihd,bjhd->bhij", q, k) * scale
    with np.errstate(divide="ignore"):
        scores = scores + np.log(mult)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    return np.einsum("bhij,bjhd->bihd", probs, v)
