"""Test-only references for LiteFocus attention, independent of the kernel's code path.

- `masked_dense_reference`: numpy float64, explicit N x N scores with per-key multiplicities.
- `released_litefocus_torch`: a transcription in torch of the released algorithm as described in
  ../shared/reference/LITEFOCUS.md §2 (layout (B, heads, N, D)), with the compensation index passed in
  instead of drawn by `torch.randperm`. Written from that description, not copied from any repository.
- `ReleasedLiteFocusAttnProcessor`: a diffusers attention processor running that transcription for
  self-attention and stock `AttnProcessor2_0` behaviour for cross-attention.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers.models.attention_processor import AttnProcessor2_0


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


def released_litefocus_torch(query, key, value, indices, f_n, scale, same_frequency=True, cross_frequency=True):
    """Released LiteFocus attention (duplicates counted twice), torch, layout (B, heads, N, D).

    indices: (K,) LongTensor, the compensation subset that the released code draws with torch.randperm.
    Returns (B, heads, N, D).
    """
    b, h, n, d = query.shape
    t_n = n // f_n
    scores, values = [], []
    if same_frequency:
        q5 = query.view(b, h, t_n, f_n, d)
        k5 = key.view(b, h, t_n, f_n, d)
        scores.append(torch.einsum("bhtfd,bhsfd->bhtfs", q5, k5) * scale)  # (b, h, T, F, T)
        values.append(("row", value.view(b, h, t_n, f_n, d)))
    if cross_frequency:
        k_c, v_c = key[:, :, indices], value[:, :, indices]  # (b, h, K, d)
        scores.append(torch.einsum("bhnd,bhkd->bhnk", query, k_c).view(b, h, t_n, f_n, -1) * scale)
        values.append(("cmp", v_c))
    probs = torch.cat(scores, dim=-1).softmax(dim=-1)
    sizes = [s.shape[-1] for s in scores]
    out = torch.zeros(b, h, t_n, f_n, d, dtype=query.dtype)
    for p, (kind, val) in zip(torch.split(probs, sizes, dim=-1), values):
        if kind == "row":
            out = out + torch.einsum("bhtfs,bhsfd->bhtfd", p, val)
        else:
            out = out + torch.einsum("bhtfk,bhkd->bhtfd", p, val)
    return out.reshape(b, h, n, d)


class ReleasedLiteFocusAttnProcessor:
    """diffusers processor: released LiteFocus for self-attention, stock SDPA for cross-attention.

    Args:
      index_provider: zero-argument callable returning the next (K,) LongTensor compensation index, called
        once per sparse self-attention call, in call order (so a test can replay the JAX side's indices).
      f_n: number of frequency rows F (the released code hard-codes 8).
      same_frequency, cross_frequency: the released toggles.
    """

    def __init__(self, index_provider: Callable[[], torch.Tensor], f_n=8, same_frequency=True,
                 cross_frequency=True):
        self.index_provider = index_provider
        self.f_n = f_n
        self.same_frequency = same_frequency
        self.cross_frequency = cross_frequency
        self._dense = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is not None:
            return self._dense(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if attention_mask is not None:
            raise ValueError("ReleasedLiteFocusAttnProcessor: the sparse self-attention path takes no mask.")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, n, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        indices = self.index_provider() if self.cross_frequency else None
        out = released_litefocus_torch(query, key, value, indices, self.f_n, attn.scale, self.same_frequency,
                                       self.cross_frequency)
        out = out.transpose(1, 2).reshape(batch, n, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
