"""Attention entry points: dense multi-head attention and LiteFocus sparse attention, one kernel per platform.

Pure functions, no Flax modules. Layout throughout is (batch, tokens, heads, head_dim), the layout of
`jax.nn.dot_product_attention`.

LiteFocus (Tan et al., Interspeech 2024, arXiv 2407.10468) lets query i attend to its own frequency row
S_i = {j : j mod F == i mod F} plus one shared random key subset C ("cross-frequency compensation"). It is
computed here in the row-batched form of ../shared/reference/LITEFOCUS.md §4: regroup the N = T*F tokens
into F rows of T tokens (a reshape, no gather), append the K gathered compensation keys to every row, and
run one dense attention with batch B*F, query length T and key length S = T + K. That is exact (one joint
softmax over [row keys | gathered keys]), costs (1/F + K/N) of dense attention and never forms an N x N
array. "exact" mode drops, per row, the gathered keys of that row: a (B*F, S) key keep flag. `litefocus_rows` is
that row form, for a block of whole-frame queries against all keys (the sequence-parallel kernel uses it too).

Every attention therefore reduces to one call shape: q (B, Nq, H, D), k/v (B, Nk, H, D) and at most a
per-(batch row, key) keep flag. `implementation=None` picks its kernel from the platform the program is
lowered for (`jax.lax.platform_dependent`, so a program exported for TPU from a CPU machine is the TPU program):

  platform  kernel                                               masks
  cpu       "chunked": one head and ~2M logits per step          key-only bias
  tpu       "pallas": Pallas splash attention (kernels/tpu.py)    per-row kv segment ids
  cuda      "cudnn" for bf16/fp16 with D % 8 == 0, D <= 256      kept keys first + key_value_seq_lengths
            (kernels/cudnn.py), else "chunked" (all heads)
  other     "chunked", all heads and rows per step, ~512 MiB of logits a block

Short key sequences (cross-attention on a handful of text tokens: < CHUNKED_MIN_KEYS keys) take XLA's one-shot
attention everywhere: its logits are Nq x Nk with Nk tiny. An additive bias that is not a keep flag (the UNet's
cross-attention mask is -10000 on padded tokens, as diffusers) always takes "xla" or "chunked". No path forms an
N x N score matrix. `implementation=` forces one kernel.
"""

from __future__ import annotations

import numbers
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from litefocus_jax.kernels import cudnn
from litefocus_jax.kernels.chunked import CHUNKED_MIN_KEYS, chunked_attention, is_key_only

Implementation = Literal["xla", "cudnn", "chunked", "pallas"] | None
Duplicates = Literal["official", "exact"]

_DUPLICATE_MODES = ("official", "exact")
_IMPLEMENTATIONS = (None, "xla", "cudnn", "chunked", "pallas")


def num_compensation_tokens(n_tokens: int, ratio: float) -> int:
    """Number K of shared compensation keys for `n_tokens` tokens at `ratio`.

    Mirrors the released code's `int(time_n * f_n * sparse_ratio)` (Python float math, truncation), so K
    matches it exactly, e.g. (8000, 0.1) -> 800.
    """
    if n_tokens < 0 or ratio < 0:
        raise ValueError(f"num_compensation_tokens needs n_tokens >= 0 and ratio >= 0, got {n_tokens=}, {ratio=}.")
    return int(n_tokens * ratio)


def dot_product_attention(
    q, k, v, *, bias=None, mask=None, scale=None, implementation: Implementation = None, query_chunk: int | None = None
):
    """Dense multi-head attention.

    Args:
      q: (B, Nq, H, D) queries.
      k: (B, Nk, H, D) keys.
      v: (B, Nk, H, D) values.
      bias: optional additive logits bias broadcastable to (B, H, Nq, Nk), e.g. (B, 1, 1, Nk) for key padding.
        Only "xla" takes a per-query bias; "chunked" takes a key-only one; "cudnn" and "pallas" take none.
      mask: optional boolean keep-mask (True = attend) broadcastable to (B, H, Nq, Nk); key-only
        ((B, 1, 1, Nk)) for every kernel but "xla".
      scale: logits scale; defaults to D ** -0.5.
      implementation: None (per platform, see the module docstring), "xla" (one-shot, materialises the logits),
        "chunked" (block-wise, `kernels/chunked.py`), "cudnn" (NVIDIA, bf16/fp16) or "pallas" (TPU splash).
      query_chunk: queries per block when the chunked path runs (None: from its logits budget).

    Returns:
      (B, Nq, H, D) in the dtype of q.
    """
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not supported; use one of {_IMPLEMENTATIONS}.")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    key_only = all(x is None or is_key_only(np.shape(x)) for x in (bias, mask))
    if implementation == "xla" or (implementation is None and (k.shape[1] < CHUNKED_MIN_KEYS or not key_only)):
        return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation="xla")
    if bias is not None or not key_only:
        if implementation in ("cudnn", "pallas"):
            raise ValueError(
                f"implementation={implementation!r} takes at most a key-only boolean mask (B, 1, 1, Nk); got "
                f"bias={None if bias is None else np.shape(bias)}, mask={None if mask is None else np.shape(mask)}. "
                "Use implementation=None, 'chunked' or 'xla'."
            )
        return chunked_attention(q, k, v, bias=bias, mask=mask, scale=scale, query_chunk=query_chunk)
    kv_keep = None if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool), (q.shape[0], 1, 1, k.shape[1]))[:, 0, 0]
    return attend(q, k, v, scale=scale, kv_keep=kv_keep, implementation=implementation, query_chunk=query_chunk)


def attend(q, k, v, *, scale: float, kv_keep=None, implementation: Implementation = None, query_chunk: int | None = None):
    """The one attention every path reduces to: q (B, Nq, H, D), k/v (B, Nk, H, D), kv_keep bool (B, Nk) or None.

    Picks the kernel per platform when `implementation` is None (module docstring). Every row of kv_keep must
    keep at least one key. Returns (B, Nq, H, D) in q's dtype.
    """
    mask = None if kv_keep is None else kv_keep[:, None, None, :]
    chunked = partial(chunked_attention, mask=mask, scale=scale, query_chunk=query_chunk)
    kernels = {
        "xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla"),
        "chunked": chunked,
        "cudnn": lambda q, k, v: cudnn.cudnn_attention(q, k, v, scale=scale, kv_keep=kv_keep),
        "pallas": lambda q, k, v: _tpu().tpu_attention(q, k, v, scale=scale, kv_keep=kv_keep),
    }
    if implementation is None and k.shape[1] < CHUNKED_MIN_KEYS:
        implementation = "xla"  # a few keys: Nq x Nk logits are small, and a kernel launch or loop costs more
    if implementation is not None:
        return kernels[implementation](q, k, v)
    on_cuda = kernels["cudnn"] if cudnn.available() and cudnn.supports(q.dtype, q.shape[-1]) else None
    accelerator_blocks = partial(chunked, all_heads=True)
    return jax.lax.platform_dependent(
        q,
        k,
        v,
        cpu=chunked,
        cuda=on_cuda or accelerator_blocks,
        tpu=kernels["pallas"],
        default=accelerator_blocks,
    )


def _tpu():
    # Imported on first use: the Pallas TPU modules cost ~1 s to import and CPU-only users never need them.
    from litefocus_jax.kernels import tpu

    return tpu


def litefocus_attention(
    q,
    k,
    v,
    *,
    freq_bins: int,
    comp_index,
    duplicates: Duplicates = "official",
    same_frequency: bool = True,
    cross_frequency: bool = True,
    scale: float | None = None,
    implementation: Implementation = None,
):
    """LiteFocus sparse self-attention in its exact row-batched form.

    Args:
      q, k, v: (B, N, H, D); token n = t * freq_bins + f (time-major, frequency fastest), N = T * freq_bins.
      freq_bins: F, the number of frequency rows (a static Python int).
      comp_index: (K,) integer array of distinct token indices in [0, N): the shared cross-frequency
        compensation subset C. Data (may be traced); K is static through its shape. Ignored, and may be
        None, when cross_frequency is False. An out-of-range index yields NaN outputs.
      duplicates: "official": a gathered key that also lies in the query's own row counts twice (the
        released code's semantics). "exact": the true union S_i ∪ C; such keys are masked out of the
        gathered part of that row.
      same_frequency: attend to the query's own frequency row.
      cross_frequency: attend to the gathered compensation keys.
      scale: logits scale; defaults to D ** -0.5.
      implementation: the kernel of the row attention (None: per platform, see the module docstring).

    Returns:
      (B, N, H, D) in the dtype of q.
    """
    comp_index = check_litefocus_args(
        q,
        k,
        v,
        freq_bins=freq_bins,
        comp_index=comp_index,
        duplicates=duplicates,
        same_frequency=same_frequency,
        cross_frequency=cross_frequency,
        implementation=implementation,
    )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return litefocus_rows(
        q,
        k,
        v,
        freq_bins=freq_bins,
        comp_index=comp_index,
        duplicates=duplicates,
        same_frequency=same_frequency,
        cross_frequency=cross_frequency,
        scale=scale,
        implementation=implementation,
    )


def litefocus_rows(
    q,
    k,
    v,
    *,
    freq_bins: int,
    comp_index,
    duplicates: Duplicates = "official",
    same_frequency: bool = True,
    cross_frequency: bool = True,
    scale: float,
    implementation: Implementation = None,
):
    """The LiteFocus row attention of whole-frame queries against all keys: the one core of `litefocus_attention`
    (Tq == T) and of `sequence_parallel.litefocus_attention` (a device's query block against all-gathered keys).

    Queries regroup into F rows of Tq frames, keys into F rows of T frames; the K gathered compensation keys are
    appended to every key row ("exact" mode: a (B*F, T + K) keep flag drops, in row f, those with index % F == f);
    one `attend` (batch B*F) runs, and the result goes back to token order.

    Args:
      q: (B, Tq * F, H, D) queries: Tq whole time frames (token n = t * F + f), Tq <= T.
      k, v: (B, T * F, H, D) the keys and values of all T frames.
      freq_bins: F (a static Python int).
      comp_index: (K,) int array of token indices into k/v's T * F tokens; unused (may be None) when
        cross_frequency is False.
      duplicates, same_frequency, cross_frequency, implementation: as `litefocus_attention`.
      scale: logits scale.

    Does no argument checks (like `attend`): pass what `litefocus_attention`'s checks accept, with q's token
    axis a whole-frame block of k's. Returns (B, Tq * F, H, D) in q's dtype.
    """
    run = partial(attend, scale=scale, implementation=implementation)
    if not same_frequency:
        # Every query sees the same K keys, so neither regrouping nor duplicate handling is needed.
        return run(q, _gather_tokens(k, comp_index), _gather_tokens(v, comp_index))

    batch = q.shape[0]
    q_rows, k_rows, v_rows = (_to_rows(x, freq_bins) for x in (q, k, v))
    if not cross_frequency:
        return _from_rows(run(q_rows, k_rows, v_rows), batch, freq_bins)

    k_all = _append_compensation(k_rows, _gather_tokens(k, comp_index), batch)
    v_all = _append_compensation(v_rows, _gather_tokens(v, comp_index), batch)
    keep = _exact_keep(comp_index, batch, freq_bins, k_rows.shape[1]) if duplicates == "exact" else None
    return _from_rows(run(q_rows, k_all, v_all, kv_keep=keep), batch, freq_bins)


def _to_rows(x, freq_bins):
    """(B, T*F, H, D) -> (B*F, T, H, D); row b*F + f holds tokens t*F + f of batch item b."""
    b, n, h, d = x.shape
    x = x.reshape(b, n // freq_bins, freq_bins, h, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(b * freq_bins, n // freq_bins, h, d)


def _from_rows(x, batch, freq_bins):
    """Inverse of `_to_rows`: (B*F, T, H, D) -> (B, T*F, H, D)."""
    _, t, h, d = x.shape
    x = x.reshape(batch, freq_bins, t, h, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(batch, t * freq_bins, h, d)


def _gather_tokens(x, comp_index):
    """(B, N, H, D) -> (B, K, H, D).

    mode="fill" makes an out-of-range index produce NaNs instead of being silently clamped to a wrong key.
    """
    return jnp.take(x, comp_index, axis=1, mode="fill")


def _append_compensation(rows, gathered, batch):
    """Rows (B*F, T, H, D) and gathered (B, K, H, D) -> (B*F, T + K, H, D), gathered keys after the row's."""
    bf, _, h, d = rows.shape
    k = gathered.shape[1]
    shared = jnp.broadcast_to(gathered[:, None], (batch, bf // batch, k, h, d))
    return jnp.concatenate([rows, shared.reshape(bf, k, h, d)], axis=1)


def _exact_keep(comp_index, batch, freq_bins, t):
    """Per-row key keep flags (B*F, T + K) that drop, in row f, the gathered keys with index % F == f.

    O(S) booleans per row: the mask depends only on the row (the batch axis of the row attention) and the key,
    which every kernel takes without a logits-sized array (a key-only mask, segment ids, or sequence lengths).
    """
    k = comp_index.shape[0]
    rows = jnp.arange(freq_bins, dtype=comp_index.dtype)
    keep_gathered = (comp_index % freq_bins)[None, :] != rows[:, None]  # (F, K)
    keep = jnp.concatenate([jnp.ones((freq_bins, t), dtype=bool), keep_gathered], axis=1)
    return jnp.broadcast_to(keep[None], (batch, freq_bins, t + k)).reshape(batch * freq_bins, t + k)


def check_litefocus_args(
    q,
    k,
    v,
    *,
    freq_bins: int,
    comp_index,
    duplicates: Duplicates,
    same_frequency: bool,
    cross_frequency: bool,
    implementation: Implementation,
):
    """The eager argument checks of `litefocus_attention` (and of its sequence-parallel form, on the global
    arrays), whose messages say what was wrong and how to fix it. Returns comp_index as a jax array (None
    stays None; unchanged when cross_frequency is False)."""
    if cross_frequency and comp_index is not None:
        comp_index = jnp.asarray(comp_index)
    if not (same_frequency or cross_frequency):
        raise ValueError(
            "litefocus_attention: same_frequency=False and cross_frequency=False leave every query without "
            "keys; enable at least one of them (or skip the attention call)."
        )
    if duplicates not in _DUPLICATE_MODES:
        raise ValueError(
            f"litefocus_attention: duplicates={duplicates!r} is not supported; use 'official' (keys both in "
            "the row and in the compensation set count twice, as released) or 'exact' (true union)."
        )
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"litefocus_attention: implementation={implementation!r} is not supported; use one of {_IMPLEMENTATIONS}."
        )
    _validate_qkv(q, k, v)
    _validate_freq_bins(freq_bins, q.shape[1])
    if cross_frequency:
        _validate_comp_index(comp_index, same_frequency)
    return comp_index


def _validate_qkv(q, k, v):
    shapes = [np.shape(x) for x in (q, k, v)]
    if any(len(s) != 4 for s in shapes):
        raise ValueError(f"litefocus_attention expects q, k, v of shape (B, N, H, D), got shapes {shapes}.")
    if not shapes[0] == shapes[1] == shapes[2]:
        raise ValueError(f"litefocus_attention is self-attention: q, k and v must share one (B, N, H, D) shape, got {shapes}.")


def _validate_freq_bins(freq_bins, n_tokens):
    if not isinstance(freq_bins, numbers.Integral) or isinstance(freq_bins, bool) or freq_bins < 1:
        raise ValueError(
            f"litefocus_attention: freq_bins must be a positive Python int (the number F of frequency rows), got {freq_bins!r}."
        )
    if n_tokens % freq_bins:
        raise ValueError(
            f"litefocus_attention: N={n_tokens} tokens is not divisible by freq_bins={freq_bins}; tokens must "
            "be a full (T, F) grid flattened time-major, so pass the activation's frequency width as freq_bins."
        )


def _validate_comp_index(comp_index, same_frequency):
    if comp_index is None:
        raise ValueError(
            "litefocus_attention: cross_frequency=True needs comp_index, a (K,) int array of compensation "
            "token indices; pass one or set cross_frequency=False."
        )
    shape = np.shape(comp_index)
    if len(shape) != 1:
        raise ValueError(
            f"litefocus_attention: comp_index must be 1-D with shape (K,), got shape {shape}; pass the index "
            "of one call, e.g. schedule[step, call]."
        )
    if not jnp.issubdtype(comp_index.dtype, jnp.integer):
        raise ValueError(
            f"litefocus_attention: comp_index must have an integer dtype, got {comp_index.dtype}; "
            "cast it with .astype(jnp.int32)."
        )
    if not same_frequency and shape[0] == 0:
        raise ValueError(
            "litefocus_attention: same_frequency=False with an empty comp_index (K=0) leaves every query "
            "without keys; use K >= 1 compensation tokens."
        )
