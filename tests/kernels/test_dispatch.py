"""The per-platform choice of `kernels.attention` and the kernels it picks, checked from a CPU machine.

What runs here: the CPU branch (bitwise the chunked kernel), the accelerator block-wise layout and the cuDNN
key reorder through XLA (numerics); the TPU and CUDA branches as lowered programs (`lowering_platforms`), with
cuDNN's trace-time version check stubbed as ACCELERATORS.md §3.4 describes. Pallas numerics: test_tpu_attention.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from litefocus_jax.kernels import attention, chunked, cudnn
from litefocus_jax.kernels.export_check import tensors_reaching


def _qkv(seed, nq, nk=None, b=2, h=2, d=8, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    shapes = [(b, nq, h, d), (b, nk or nq, h, d), (b, nk or nq, h, d)]
    return [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]


def _keep(seed, b, nk, p=0.3):
    keep = np.random.default_rng(seed).random((b, nk)) > p
    keep[:, 0] = True  # every row keeps a key
    return jnp.asarray(keep)


def _lowered(fn, *args, platform):
    sds = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
    return jax.jit(fn).trace(*sds).lower(lowering_platforms=(platform,)).as_text()


def test_cpu_default_is_the_chunked_kernel_bitwise():
    q, k, v = _qkv(0, 200, 300)
    keep = _keep(1, 2, 300)
    run = jax.jit(lambda q, k, v, m: attention.attend(q, k, v, scale=0.3, kv_keep=m))
    ref = jax.jit(lambda q, k, v, m: chunked.chunked_attention(q, k, v, mask=m[:, None, None, :], scale=0.3))
    np.testing.assert_array_equal(np.asarray(run(q, k, v, keep)), np.asarray(ref(q, k, v, keep)))


def test_short_key_sequences_take_xla_everywhere():
    q, k, v = _qkv(2, 300, chunked.CHUNKED_MIN_KEYS - 1)
    out = jax.jit(lambda q, k, v: attention.attend(q, k, v, scale=0.5))(q, k, v)
    ref = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=0.5, implementation="xla"))(q, k, v)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    for platform in ("tpu", "cuda"):
        text = _lowered(lambda q, k, v: attention.attend(q, k, v, scale=0.5), q, k, v, platform=platform)
        assert "tpu_custom_call" not in text and "__cudnn$" not in text


@pytest.mark.parametrize("query_chunk", [None, 7, 64])
def test_accelerator_layout_matches_xla_with_key_mask(query_chunk):
    """The block path of GPUs without cuDNN and other accelerators: all heads per step, one softmax per block."""
    q, k, v = _qkv(3, 150, 170, h=3)
    keep = _keep(4, 2, 170)
    mask = keep[:, None, None, :]
    out = chunked.chunked_attention(q, k, v, mask=mask, query_chunk=query_chunk, all_heads=True)
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-6)  # reached: ~4e-7


def test_accelerator_layout_gradients_match_xla():
    q, k, v = _qkv(5, 40, 50)
    mask = _keep(6, 2, 50)[:, None, None, :]
    loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
    ours = jax.grad(loss(lambda q, k, v: chunked.chunked_attention(q, k, v, mask=mask, query_chunk=16, all_heads=True)),
                    argnums=(0, 1, 2))(q, k, v)  # fmt: skip
    ref = jax.grad(loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask)), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-6)  # reached: ~1e-6


def test_accelerator_block_size_comes_from_the_logits_budget():
    # 80 s dense level 1 in the UNet: B=2, H=8, N=8000 -> 2**27 / (16 * 8000) = 1048 queries a block, 8 blocks.
    q = jax.ShapeDtypeStruct((2, 8000, 8, 32), jnp.bfloat16)
    text = _lowered(functools.partial(chunked.chunked_attention, all_heads=True), q, q, q, platform="cuda")
    assert not tensors_reaching(text, 8000 * 8000 // 4)
    assert "2x8x1000x8000xf32" in text or "2x8x1000x8000xbf16" in text  # one block of 8 x 1000 queries


@pytest.mark.parametrize("freq_bins, t, ratio", [(4, 30, 0.2), (8, 17, 0.1)])
def test_cudnn_reformulation_equals_exact_mode(freq_bins, t, ratio):
    """Kept keys first + key_value_seq_lengths (cuDNN's padding mask) is exact mode, through XLA on CPU."""
    n = t * freq_bins
    q, k, v = _qkv(7, n, h=4, d=32)
    idx = jnp.asarray(np.random.default_rng(8).choice(n, int(n * ratio), replace=False), jnp.int32)
    ref = attention.litefocus_attention(q, k, v, freq_bins=freq_bins, comp_index=idx, duplicates="exact", implementation="xla")
    rows = [attention._to_rows(x, freq_bins) for x in (q, k, v)]
    k_all = attention._append_compensation(rows[1], attention._gather_tokens(k, idx), 2)
    v_all = attention._append_compensation(rows[2], attention._gather_tokens(v, idx), 2)
    keep = attention._exact_keep(idx, 2, freq_bins, t)
    out = cudnn.cudnn_attention(rows[0], k_all, v_all, scale=32**-0.5, kv_keep=keep, implementation="xla")
    np.testing.assert_allclose(np.asarray(attention._from_rows(out, 2, freq_bins)), np.asarray(ref), atol=1e-6)


def test_keys_kept_first_is_a_stable_per_row_permutation():
    k = jnp.arange(2 * 6, dtype=jnp.float32).reshape(2, 6, 1, 1)
    keep = jnp.asarray([[True, False, True, False, True, True], [False, True, True, True, True, True]])
    k2, _, lengths = cudnn.keys_kept_first(k, k, keep)
    np.testing.assert_array_equal(np.asarray(k2)[..., 0, 0], [[0, 2, 4, 5, 1, 3], [7, 8, 9, 10, 11, 6]])
    np.testing.assert_array_equal(np.asarray(lengths), [4, 5])


def test_tpu_program_uses_the_pallas_kernel_and_no_logits():
    q, k, v = _qkv(9, 1000, 1800, b=16, h=8, d=32, dtype=jnp.bfloat16)
    keep = _keep(10, 16, 1800)
    text = _lowered(lambda q, k, v, m: attention.attend(q, k, v, scale=0.2, kv_keep=m), q, k, v, keep, platform="tpu")
    assert "tpu_custom_call" in text
    assert not tensors_reaching(text, 1000 * 1800 // 2)


@pytest.fixture
def stub_cudnn():
    """Let JAX's cuDNN wrapper trace on a machine without a GPU (its version check runs at trace time)."""
    with cudnn.assume_cudnn():
        yield


def test_cuda_program_without_cudnn_takes_the_block_path():
    cudnn.available.cache_clear()
    assert not cudnn.available()
    q, k, v = _qkv(11, 1000, 1800, b=16, h=8, d=32, dtype=jnp.bfloat16)
    text = _lowered(lambda q, k, v: attention.attend(q, k, v, scale=0.2), q, k, v, platform="cuda")
    assert "__cudnn$" not in text and not tensors_reaching(text, 16 * 1000 * 1800)


def test_cuda_program_uses_cudnn_without_a_bias_for_exact_rows(stub_cudnn):
    q, k, v = _qkv(12, 1000, 1800, b=16, h=8, d=32, dtype=jnp.bfloat16)
    keep = _keep(13, 16, 1800)
    text = _lowered(lambda q, k, v, m: attention.attend(q, k, v, scale=0.2, kv_keep=m), q, k, v, keep, platform="cuda")
    assert "__cudnn$fmhaSoftmax" in text and "fmhaScaleBiasSoftmax" not in text
    assert not tensors_reaching(text, 1000 * 1800 // 2)


def test_cuda_program_falls_back_to_blocks_for_fp32_and_wide_heads(stub_cudnn):
    n = 16000  # N x N logits (2**28) exceed the 2**27-logit block budget, so blocks show
    for dtype, d in ((jnp.float32, 32), (jnp.bfloat16, 512)):
        q = jax.ShapeDtypeStruct((1, n, 1, d), dtype)
        text = _lowered(lambda q, k, v: attention.attend(q, k, v, scale=0.1), q, q, q, platform="cuda")
        assert "__cudnn$" not in text and not tensors_reaching(text, n * n), (dtype, d)


def test_forced_kernels_and_their_errors():
    q, k, v = _qkv(15, 130)
    with pytest.raises(ValueError, match="not supported"):
        attention.dot_product_attention(q, k, v, implementation="flash")
    with pytest.raises(ValueError, match="key-only boolean mask"):
        attention.dot_product_attention(q, k, v, bias=jnp.zeros((2, 1, 1, 130)), implementation="pallas")
    with pytest.raises(ValueError, match="bf16/fp16"):
        cudnn.cudnn_attention(q, k, v, scale=1.0)
