"""Tests of litefocus_jax.kernels.attention against independent references (numpy N x N, released-style torch)."""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from jax.test_util import check_grads
from litefocus_reference import (
    ReleasedLiteFocusAttnProcessor,
    masked_dense_reference,
    released_litefocus_torch,
)

from litefocus_jax.kernels import attention, chunked
from litefocus_jax.kernels.attention import (
    dot_product_attention,
    litefocus_attention,
    litefocus_rows,
    num_compensation_tokens,
)

jax.config.update("jax_enable_x64", False)

ATOL = 1e-5
B, H, D = 2, 2, 8


def _qkv(seed, n, batch=B, heads=H, dim=D, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((batch, n, heads, dim)).astype(dtype) for _ in range(3))


def _comp_index(seed, n, ratio):
    return np.random.default_rng(seed).permutation(n)[: num_compensation_tokens(n, ratio)].astype(np.int32)


def _max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _dense_numpy(q, k, v, scale):
    """Plain softmax attention, (B, Nq, H, D) x (B, Nk, H, D) -> (B, Nq, H, D), float64."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = np.einsum("bihd,bjhd->bhij", q, k) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhij,bjhd->bihd", p / p.sum(-1, keepdims=True), v)


# --- agreement with the masked N x N reference -------------------------------------------------------------


@pytest.mark.parametrize("freq_bins", [2, 4, 8, 16])
@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_matches_masked_reference_both_duplicate_modes(freq_bins, implementation):
    t = 7
    n = t * freq_bins
    q, k, v = _qkv(freq_bins, n)
    # Every gathered key lies in some frequency row, so for K >= 1 the duplicate modes must differ.
    idx = _comp_index(100 + freq_bins, n, 0.25)
    scale = D**-0.5
    outs = {}
    for mode in ("official", "exact"):
        out = litefocus_attention(q, k, v, freq_bins=freq_bins, comp_index=idx, duplicates=mode, implementation=implementation)
        ref = masked_dense_reference(q, k, v, freq_bins, idx, mode, True, True, scale)
        assert out.shape == q.shape and out.dtype == jnp.float32
        assert _max_err(out, ref) < ATOL, (mode, _max_err(out, ref))
        outs[mode] = out
    assert _max_err(outs["official"], outs["exact"]) > 1e-2


@pytest.mark.parametrize("duplicates", ["official", "exact"])
@pytest.mark.parametrize("same_frequency,cross_frequency", [(True, False), (False, True)])
def test_single_part_matches_masked_reference(duplicates, same_frequency, cross_frequency):
    freq_bins, t = 4, 9
    q, k, v = _qkv(3, t * freq_bins)
    idx = _comp_index(4, t * freq_bins, 0.2)
    out = litefocus_attention(
        q,
        k,
        v,
        freq_bins=freq_bins,
        comp_index=idx if cross_frequency else None,
        duplicates=duplicates,
        same_frequency=same_frequency,
        cross_frequency=cross_frequency,
    )
    ref = masked_dense_reference(q, k, v, freq_bins, idx, duplicates, same_frequency, cross_frequency, D**-0.5)
    assert _max_err(out, ref) < ATOL


def test_custom_scale_and_jit_with_traced_index():
    freq_bins, t = 8, 6
    n = t * freq_bins
    q, k, v = _qkv(5, n)
    fn = jax.jit(functools.partial(litefocus_attention, freq_bins=freq_bins, duplicates="exact", scale=0.5))
    for seed in (6, 7):  # one compiled function serves every index
        idx = _comp_index(seed, n, 0.1)
        ref = masked_dense_reference(q, k, v, freq_bins, idx, "exact", True, True, 0.5)
        assert _max_err(fn(q, k, v, comp_index=idx), ref) < ATOL
    assert fn._cache_size() == 1


@pytest.mark.parametrize("duplicates", ["official", "exact"])
@pytest.mark.parametrize("same_frequency,cross_frequency", [(True, True), (True, False), (False, True)])
def test_rows_of_a_query_block_equal_that_block_of_the_full_call(duplicates, same_frequency, cross_frequency):
    """litefocus_rows on frames [t0, t1) of the queries against all keys (the sequence-parallel local call) is
    that token block of litefocus_attention, which is litefocus_rows with every frame."""
    freq_bins, t = 4, 12
    n = t * freq_bins
    q, k, v = _qkv(31, n)
    idx = jnp.asarray(_comp_index(32, n, 0.25)) if cross_frequency else None
    form = dict(
        freq_bins=freq_bins,
        comp_index=idx,
        duplicates=duplicates,
        same_frequency=same_frequency,
        cross_frequency=cross_frequency,
        implementation="xla",
    )
    full = litefocus_attention(q, k, v, **form)
    np.testing.assert_array_equal(np.asarray(litefocus_rows(q, k, v, scale=D**-0.5, **form)), np.asarray(full))
    for t0, t1 in ((0, 3), (3, 6), (9, 12), (2, 11)):
        block = litefocus_rows(q[:, t0 * freq_bins : t1 * freq_bins], k, v, scale=D**-0.5, **form)
        assert block.shape == (B, (t1 - t0) * freq_bins, H, D)
        np.testing.assert_allclose(np.asarray(block), np.asarray(full[:, t0 * freq_bins : t1 * freq_bins]), atol=1e-6)


# --- agreement with the released algorithm (torch) ---------------------------------------------------------


@pytest.mark.parametrize("freq_bins", [4, 8])
@pytest.mark.parametrize("same_frequency,cross_frequency", [(True, True), (True, False), (False, True)])
def test_matches_released_torch(freq_bins, same_frequency, cross_frequency):
    t = 10
    n = t * freq_bins
    q, k, v = _qkv(11, n)
    idx = _comp_index(12, n, 0.1)
    scale = D**-0.5
    out = litefocus_attention(
        q,
        k,
        v,
        freq_bins=freq_bins,
        comp_index=idx,
        duplicates="official",
        same_frequency=same_frequency,
        cross_frequency=cross_frequency,
    )
    to_torch = lambda x: torch.from_numpy(x).permute(0, 2, 1, 3)  # (B, N, H, D) -> (B, H, N, D)
    ref = released_litefocus_torch(
        to_torch(q),
        to_torch(k),
        to_torch(v),
        torch.from_numpy(idx).long(),
        freq_bins,
        scale,
        same_frequency,
        cross_frequency,
    ).permute(0, 2, 1, 3)
    assert _max_err(out, ref.numpy()) < ATOL


# --- special cases that reduce to plain attention ----------------------------------------------------------


def test_same_frequency_only_is_per_row_dense_attention():
    freq_bins, t = 8, 12
    q, k, v = _qkv(21, t * freq_bins)
    out = litefocus_attention(q, k, v, freq_bins=freq_bins, comp_index=None, cross_frequency=False)
    rows = lambda x: x.reshape(B, t, freq_bins, H, D).transpose(0, 2, 1, 3, 4).reshape(B * freq_bins, t, H, D)
    ref = _dense_numpy(rows(q), rows(k), rows(v), D**-0.5)
    ref = ref.reshape(B, freq_bins, t, H, D).transpose(0, 2, 1, 3, 4).reshape(B, t * freq_bins, H, D)
    assert _max_err(out, ref) < ATOL


def test_cross_frequency_only_is_dense_attention_over_gathered_keys():
    freq_bins, t = 4, 8
    q, k, v = _qkv(22, t * freq_bins)
    idx = _comp_index(23, t * freq_bins, 0.3)
    out = litefocus_attention(q, k, v, freq_bins=freq_bins, comp_index=idx, same_frequency=False)
    assert _max_err(out, _dense_numpy(q, k[:, idx], v[:, idx], D**-0.5)) < ATOL


@pytest.mark.parametrize("same_frequency", [False, True])
def test_exact_mode_with_all_tokens_is_dense_attention(same_frequency):
    # ratio 1.0: C = every token, so the exact union is everything (with or without the own row).
    freq_bins, t = 8, 6
    n = t * freq_bins
    q, k, v = _qkv(24, n)
    idx = _comp_index(25, n, 1.0)
    assert idx.shape == (n,)
    out = litefocus_attention(q, k, v, freq_bins=freq_bins, comp_index=idx, duplicates="exact", same_frequency=same_frequency)
    ref = _dense_numpy(q, k, v, D**-0.5)
    assert _max_err(out, ref) < ATOL
    assert _max_err(dot_product_attention(q, k, v), ref) < ATOL


@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_dense_attention_key_padding_bias(implementation):
    q, k, v = _qkv(26, 10)
    keep = np.arange(10) < 7
    bias = np.where(keep, 0.0, -1e9).astype(np.float32)[None, None, None, :]
    out = dot_product_attention(q, k, v, bias=np.broadcast_to(bias, (B, 1, 1, 10)), implementation=implementation)
    assert _max_err(out, _dense_numpy(q, k[:, keep], v[:, keep], D**-0.5)) < ATOL


@pytest.mark.parametrize("nq,nk,query_chunk", [(13, 13, 4), (40, 9, 7), (5, 300, 256), (128, 128, 1000)])
def test_chunked_dense_matches_numpy_with_bias_and_mask(nq, nk, query_chunk):
    # Several blocks, a last block of padding queries, Nq != Nk, and one block larger than Nq.
    q, _, _ = _qkv(61, nq)
    _, k, v = _qkv(62, nk)
    rng = np.random.default_rng(63)
    keep = rng.random((B, 1, 1, nk)) > 0.3
    keep[..., 0] = True
    bias = rng.standard_normal((B, 1, 1, nk)).astype(np.float32)
    out = chunked.chunked_attention(q, k, v, bias=bias, mask=keep, query_chunk=query_chunk)
    assert out.shape == q.shape and out.dtype == jnp.float32
    for b in range(B):
        cols = keep[b, 0, 0]
        w = np.exp(bias[b, 0, 0, cols].astype(np.float64))  # an additive logit bias is a per-key weight
        s = np.einsum("ihd,jhd->hij", q[b].astype(np.float64), k[b, cols].astype(np.float64)) * D**-0.5
        p = np.exp(s - s.max(-1, keepdims=True)) * w
        ref = np.einsum("hij,jhd->ihd", p / p.sum(-1, keepdims=True), v[b, cols].astype(np.float64))
        assert _max_err(out[b], ref) < ATOL
    xla = dot_product_attention(q, k, v, bias=bias, mask=keep, implementation="xla")
    assert _max_err(out, xla) < ATOL


def test_chunked_takes_key_only_masks_only():
    q, k, _ = _qkv(64, chunked.CHUNKED_MIN_KEYS)
    per_query = np.zeros((B, 1, q.shape[1], q.shape[1]), np.float32)
    with pytest.raises(ValueError, match="key-only bias.*implementation='xla'"):
        chunked.chunked_attention(q, k, k, bias=per_query)


def test_exact_keep_drops_each_gathered_key_in_its_own_row_only():
    idx = jnp.asarray(_comp_index(27, 40, 0.2))
    keep = np.asarray(attention._exact_keep(idx, 2, 4, 10))
    assert keep.shape == (8, 18) and keep[:, :10].all()  # (B*F, T + K); the row's own keys always kept
    for row in range(8):
        np.testing.assert_array_equal(keep[row, 10:], np.asarray(idx) % 4 != row % 4)
    assert int(keep.sum()) == 8 * 18 - 2 * 8  # each gathered key is dropped in exactly one row


# --- gradients and dtypes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("duplicates", ["official", "exact"])
def test_gradients_finite(duplicates):
    freq_bins, t = 4, 6
    q, k, v = _qkv(31, t * freq_bins)
    idx = _comp_index(32, t * freq_bins, 0.25)
    w = np.random.default_rng(33).standard_normal(q.shape).astype(np.float32)

    def loss(q, k, v):
        return jnp.sum(w * litefocus_attention(q, k, v, freq_bins=freq_bins, comp_index=idx, duplicates=duplicates))

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert g.shape == q.shape and bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0


@pytest.mark.parametrize("duplicates", ["official", "exact"])
@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_gradients_match_finite_differences(duplicates, implementation):
    # jax.nn.dot_product_attention always takes its softmax in fp32, so even float64 inputs give ~1e-7
    # relative accuracy: a large step keeps the difference quotient above that round-off.
    freq_bins, t = 2, 3
    idx = np.array([1, 2, 5], np.int32)  # 1 and 5 lie in row 1, 2 in row 0
    with jax.enable_x64(True):
        q, k, v = _qkv(34, t * freq_bins, batch=1, heads=2, dim=4, dtype=np.float64)
        fn = functools.partial(
            litefocus_attention, freq_bins=freq_bins, comp_index=idx, duplicates=duplicates, implementation=implementation
        )
        check_grads(fn, (q, k, v), order=1, modes=["rev"], eps=1e-2, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("duplicates", ["official", "exact"])
@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_gradients_match_masked_dense_gradients(duplicates, implementation):
    freq_bins, t = 4, 5
    n = t * freq_bins
    q, k, v = _qkv(35, n)
    idx = _comp_index(36, n, 0.3)
    tokens = np.arange(n)
    mult = (tokens[:, None] % freq_bins == tokens[None, :] % freq_bins) + np.bincount(idx, minlength=n)[None, :]
    if duplicates == "exact":
        mult = mult > 0
    with np.errstate(divide="ignore"):
        log_mult = jnp.asarray(np.log(mult.astype(np.float64)), jnp.float32)

    def dense_loss(q, k, v):
        p = jax.nn.softmax(jnp.einsum("bihd,bjhd->bhij", q, k) * D**-0.5 + log_mult, axis=-1)
        return jnp.sum(jnp.sin(jnp.einsum("bhij,bjhd->bihd", p, v)))

    def sparse_loss(q, k, v):
        out = litefocus_attention(
            q, k, v, freq_bins=freq_bins, comp_index=idx, duplicates=duplicates, implementation=implementation
        )
        return jnp.sum(jnp.sin(out))

    got = jax.grad(sparse_loss, argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(dense_loss, argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        assert _max_err(g, w) < ATOL


@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_bfloat16_close_to_float32(implementation):
    freq_bins, t = 8, 8
    n = t * freq_bins
    q, k, v = _qkv(41, n)
    idx = _comp_index(42, n, 0.1)
    for mode in ("official", "exact"):
        ref = litefocus_attention(q, k, v, freq_bins=freq_bins, comp_index=idx, duplicates=mode)
        q16, k16, v16 = (jnp.asarray(x, jnp.bfloat16) for x in (q, k, v))
        out = litefocus_attention(
            q16, k16, v16, freq_bins=freq_bins, comp_index=idx, duplicates=mode, implementation=implementation
        )
        assert out.dtype == jnp.bfloat16
        assert _max_err(out.astype(jnp.float32), ref) < 3e-2


def test_num_compensation_tokens_matches_released_truncation():
    assert num_compensation_tokens(8000, 0.1) == 800
    assert num_compensation_tokens(1000, 0.1) == int(125 * 8 * 0.1) == 100
    assert num_compensation_tokens(8 * 37, 0.1) == int(8 * 37 * 0.1) == 29
    assert num_compensation_tokens(10, 0.0) == 0


# --- argument validation -----------------------------------------------------------------------------------


def test_value_errors():
    q, k, v = _qkv(51, 24)
    idx = _comp_index(52, 24, 0.25)
    call = functools.partial(litefocus_attention, q, k, v)
    with pytest.raises(ValueError, match="both False|same_frequency=False and cross_frequency=False"):
        call(freq_bins=4, comp_index=idx, same_frequency=False, cross_frequency=False)
    with pytest.raises(ValueError, match="N=24 tokens is not divisible by freq_bins=5"):
        call(freq_bins=5, comp_index=idx)
    with pytest.raises(ValueError, match="duplicates='union'"):
        call(freq_bins=4, comp_index=idx, duplicates="union")
    with pytest.raises(ValueError, match=r"1-D.*\(2, 3\)"):
        call(freq_bins=4, comp_index=idx[:6].reshape(2, 3))
    with pytest.raises(ValueError, match="integer dtype"):
        call(freq_bins=4, comp_index=idx.astype(np.float32))
    with pytest.raises(ValueError, match="needs comp_index"):
        call(freq_bins=4, comp_index=None)
    with pytest.raises(ValueError, match="positive Python int"):
        call(freq_bins=0, comp_index=idx)
    with pytest.raises(ValueError, match="share one"):
        litefocus_attention(q, k[:, :12], v[:, :12], freq_bins=4, comp_index=idx)
    with pytest.raises(ValueError, match="implementation='flash'"):
        call(freq_bins=4, comp_index=idx, implementation="flash")


# --- no N x N array anywhere -------------------------------------------------------------------------------

_HLO_SHAPE = re.compile(r"\b(?:pred|bf16|[fsuc]\d+)\[([\d,]*)\]")
_MLIR_SHAPE = re.compile(r"tensor<((?:\d+x)+)(?:[a-z]+\d*)>")


def _max_array_elements(text):
    dims = [m.group(1).split(",") for m in _HLO_SHAPE.finditer(text)]
    dims += [m.group(1).rstrip("x").split("x") for m in _MLIR_SHAPE.finditer(text)]
    assert dims, "no shapes parsed: the HLO text format changed"
    return max(math.prod(int(d) for d in ds if d) for ds in dims)


def _max_elements_all_stages(fn, *args):
    lowered = jax.jit(fn).lower(*args)
    texts = [lowered.as_text(), lowered.as_text(dialect="hlo"), lowered.compile().as_text()]
    return [_max_array_elements(t) for t in texts]


@pytest.mark.parametrize("implementation", ["xla", "chunked"])
def test_no_n_by_n_array_in_lowered_or_compiled_hlo(implementation):
    b, n, h, d, f, k = 1, 8000, 8, 32, 8, 800
    t = n // f
    row_logits = b * f * h * t * (t + k)  # (B*F, H, T, T + K): (1/F + K/N) = 0.225 of the dense logits
    row_keys = b * f * (t + k) * h * d  # (B*F, T + K, H, D): the row keys with the gathered ones appended
    x = jax.ShapeDtypeStruct((b, n, h, d), jnp.float32)
    idx = jax.ShapeDtypeStruct((k,), jnp.int32)
    fn = functools.partial(litefocus_attention, freq_bins=f, implementation=implementation)
    for mode in ("official", "exact"):
        sizes = _max_elements_all_stages(lambda q, k_, v, i: fn(q, k_, v, comp_index=i, duplicates=mode), x, x, x, idx)
        if implementation == "xla":
            assert max(sizes) == row_logits, sizes
        else:  # one (query block, T + K) logits block at a time: the largest array is the row keys
            assert max(sizes) == row_keys, sizes
        assert max(sizes) // (b * h) < n * n, sizes
    # Backward pass too: the gather's transpose is a scatter-add into (B, N, H, D), nothing N x N.
    loss = lambda q, k_, v, i: jnp.sum(fn(q, k_, v, comp_index=i))
    grad_sizes = _max_elements_all_stages(jax.grad(loss, argnums=(0, 1, 2)), x, x, x, idx)
    assert max(grad_sizes) == (row_logits if implementation == "xla" else row_keys), grad_sizes
    # The same check finds the (B, H, N, N) logits of one-shot dense attention, so it can fail; chunked dense
    # attention has none either.
    dense_sizes = _max_elements_all_stages(functools.partial(dot_product_attention, implementation=implementation), x, x, x)
    if implementation == "xla":
        assert min(dense_sizes) >= b * h * n * n, dense_sizes
    else:  # the inputs, or one block of about BLOCK_LOGITS logits
        assert max(dense_sizes) <= max(b * n * h * d, 2 * chunked.BLOCK_LOGITS) < n * n // 8, dense_sizes


# --- the diffusers processor used by UNet-level parity tests ----------------------------------------------


def test_released_processor_matches_kernel_and_falls_back_to_dense():
    torch.manual_seed(0)
    heads, dim_head, freq_bins, t = 2, 8, 4, 5
    n, channels = freq_bins * t, heads * dim_head
    attn = Attention(query_dim=channels, heads=heads, dim_head=dim_head).eval()
    indices = [torch.randperm(n)[:3] for _ in range(2)]
    feed = iter(indices)
    attn.set_processor(ReleasedLiteFocusAttnProcessor(lambda: next(feed), f_n=freq_bins))
    x = torch.randn(B, n, channels)
    with torch.no_grad():
        split = lambda y: y.view(B, n, heads, dim_head).numpy()
        q, k, v = split(attn.to_q(x)), split(attn.to_k(x)), split(attn.to_v(x))
        for index in indices:
            out = attn(x)
            core = litefocus_attention(q, k, v, freq_bins=freq_bins, comp_index=index.numpy().astype(np.int32))
            core = torch.from_numpy(np.array(core).reshape(B, n, channels))
            assert _max_err(out.numpy(), attn.to_out[0](core).numpy()) < ATOL
        context = torch.randn(B, 7, channels)
        dense = Attention(query_dim=channels, heads=heads, dim_head=dim_head).eval()
        dense.load_state_dict(attn.state_dict())
        dense.set_processor(AttnProcessor2_0())
        assert _max_err(attn(x, encoder_hidden_states=context).numpy(), dense(x, context).numpy()) < ATOL
