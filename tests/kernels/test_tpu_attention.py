"""The TPU splash kernels of litefocus_jax.kernels.tpu, proven without a TPU.

Numerics: the Pallas kernels in interpret mode (CPU) against masked-dense references (XLA with a mask, and
the numpy float64 N x N LiteFocus reference), forward and gradients. Lowering and memory: `jax.export` for
platform "tpu" (Mosaic kernels, interpret=False) at the real 80 s / 320 s geometries, checked with
litefocus_jax.kernels.export_check: the largest array of each program and that none has logits-sized dims.
Shapes in the numeric tests are small (interpret mode runs the grid as an XLA loop) but cross block
boundaries: 128-blocks over lengths 150-300, so several q and kv blocks with padding in the last one.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from litefocus_reference import masked_dense_reference

from litefocus_jax.kernels import export_check, tpu
from litefocus_jax.kernels.attention import litefocus_attention
from litefocus_jax.kernels.tpu import BlockSizes, tpu_attention

# fp32: both sides compute the same softmax in fp32; differences are summation order only.
FP32_TOL = 1e-5
# bf16: inputs are bf16 in both; the kernel rounds q * scale and its output to bf16 (relative 2^-8 each)
# while the reference stays fp32, so allow two bf16 roundings of an O(1) value. test_bf16_within_bound prints
# the errors reached and those of XLA's own bf16 attention on the same inputs.
BF16_TOL = 2 * 2.0**-8
# 128 everywhere: the smallest legal splash blocks, so the small test lengths span several blocks.
SMALL_BLOCKS = BlockSizes(*(128,) * 8)
GiB = 1 << 30


def _qkv(seed, q_shape, kv_shape, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (
        jax.random.normal(kq, q_shape).astype(dtype),
        jax.random.normal(kk, kv_shape).astype(dtype),
        jax.random.normal(kv, kv_shape).astype(dtype),
    )


def _xla_masked(q, k, v, kv_keep=None):
    """Reference in fp32: jax.nn's one-shot XLA attention with a key-only boolean mask."""
    mask = None if kv_keep is None else kv_keep[:, None, None, :]
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    return jax.nn.dot_product_attention(*f32, mask=mask, implementation="xla")


def _grads(fn, q, k, v, seed=7):
    """Gradients w.r.t. q, k, v of a random linear functional of fn's output (all output entries matter)."""
    w = jax.random.normal(jax.random.PRNGKey(seed), (q.shape[0], q.shape[1], q.shape[2], v.shape[3]))
    return jax.grad(lambda *a: jnp.sum(w * fn(*a).astype(jnp.float32)), argnums=(0, 1, 2))(q, k, v)


def _max_abs(a, b):
    return float(jnp.max(jnp.abs(jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32))))


def _grad_rel_errors(got, want):
    """Per-argument max abs error relative to the largest reference gradient entry."""
    return [_max_abs(g, w) / float(jnp.max(jnp.abs(w))) for g, w in zip(got, want)]


def _random_keep(seed, batch, n_k):
    keep = jax.random.uniform(jax.random.PRNGKey(seed), (batch, n_k)) > 0.3
    return keep.at[:, 0].set(True)  # every row keeps a key (a fully masked row has no defined softmax)


@pytest.mark.parametrize(
    "batch, n, heads, head_dim",
    [(2, 200, 2, 32), (1, 200, 1, 512)],
    ids=["d32", "d512-vae"],
)
def test_dense_matches_reference(batch, n, heads, head_dim):
    """Default blocks: one 256 block, so N = 200 is padded and masked through the shared kv ids."""
    q, k, v = _qkv(0, (batch, n, heads, head_dim), (batch, n, heads, head_dim))
    fn = functools.partial(tpu_attention, interpret=True)
    err = _max_abs(fn(q, k, v), _xla_masked(q, k, v))
    grad_err = _grad_rel_errors(_grads(fn, q, k, v), _grads(_xla_masked, q, k, v))
    print(f"dense D={head_dim}: forward max abs {err:.1e}, gradient rel {max(grad_err):.1e}")
    assert err <= FP32_TOL
    assert max(grad_err) <= FP32_TOL


def test_key_padding_multiblock_cross_lengths():
    """Nq = 150 (2 q blocks), Nk = 300 (3 kv blocks), per-row keep flags plus block padding."""
    q, k, v = _qkv(1, (2, 150, 2, 32), (2, 300, 2, 32))
    keep = _random_keep(2, 2, 300)
    fn = functools.partial(tpu_attention, kv_keep=keep, interpret=True, block_sizes=SMALL_BLOCKS)
    ref = functools.partial(_xla_masked, kv_keep=keep)
    out = fn(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    err = _max_abs(out, ref(q, k, v))
    grad_err = _grad_rel_errors(_grads(fn, q, k, v), _grads(ref, q, k, v))
    print(f"key padding: forward max abs {err:.1e}, gradient rel {max(grad_err):.1e}")
    assert err <= FP32_TOL
    assert max(grad_err) <= FP32_TOL
    # The flags matter: dropping keys changes the result far beyond the tolerance.
    assert _max_abs(out, _xla_masked(q, k, v)) > 100 * FP32_TOL


def _tpu_litefocus(q, k, v, comp_index, *, freq_bins, duplicates):
    """LiteFocus in its row form (LITEFOCUS.md §4) with tpu_attention as the row attention.

    Written out here, not imported from attention.py's private helpers, so that this test states the contract
    independently: rows b*F + f hold tokens t*F + f, each followed by the K gathered keys; in "exact" mode row
    f's kv_keep drops the gathered keys with index % F == f.
    """
    batch, n, heads, dim = q.shape
    t = n // freq_bins
    rows = lambda x: x.reshape(batch, t, freq_bins, heads, dim).transpose(0, 2, 1, 3, 4).reshape(-1, t, heads, dim)

    def with_gathered(x):
        gathered = jnp.broadcast_to(x[:, None, comp_index], (batch, freq_bins, len(comp_index), heads, dim))
        return jnp.concatenate([rows(x), gathered.reshape(batch * freq_bins, -1, heads, dim)], axis=1)

    keep = None
    if duplicates == "exact":
        keep_gathered = (comp_index % freq_bins)[None, :] != jnp.arange(freq_bins)[:, None]  # (F, K)
        keep = jnp.concatenate([jnp.ones((freq_bins, t), bool), keep_gathered], axis=1)
        keep = jnp.tile(keep, (batch, 1))  # (B*F, S): row b*F + f
    out = tpu_attention(rows(q), with_gathered(k), with_gathered(v), kv_keep=keep, interpret=True, block_sizes=SMALL_BLOCKS)
    return out.reshape(batch, freq_bins, t, heads, dim).transpose(0, 2, 1, 3, 4).reshape(batch, n, heads, dim)


@pytest.mark.parametrize("duplicates", ["official", "exact"])
def test_litefocus_rows(duplicates):
    """B=2, F=4, T=150 (2 q blocks), K=60, S=210 (2 kv blocks): rows official and exact end to end."""
    freq_bins, n = 4, 600
    q, k, v = _qkv(3, (2, n, 2, 32), (2, n, 2, 32))
    comp_index = jax.random.permutation(jax.random.PRNGKey(4), n)[:60].astype(jnp.int32)
    # Exact mode must actually drop keys: some gathered keys lie in every row.
    assert set(np.asarray(comp_index) % freq_bins) == set(range(freq_bins))
    # Jitted with comp_index as data, as in the pipeline (kv_keep is then a traced array).
    rows_fn = jax.jit(functools.partial(_tpu_litefocus, freq_bins=freq_bins, duplicates=duplicates))
    fn = lambda q, k, v: rows_fn(q, k, v, comp_index)
    ref = lambda q, k, v: litefocus_attention(
        q, k, v, freq_bins=freq_bins, comp_index=comp_index, duplicates=duplicates, implementation="xla"
    )
    out = fn(q, k, v)
    err = _max_abs(out, ref(q, k, v))
    dense = masked_dense_reference(q, k, v, freq_bins, np.asarray(comp_index), duplicates, True, True, 32**-0.5)
    err_dense = float(np.max(np.abs(np.asarray(out, np.float64) - dense)))
    grad_err = _grad_rel_errors(_grads(fn, q, k, v), _grads(ref, q, k, v))
    print(f"rows {duplicates}: vs xla {err:.1e}, vs numpy N x N {err_dense:.1e}, gradient rel {max(grad_err):.1e}")
    assert err <= FP32_TOL and err_dense <= FP32_TOL
    assert max(grad_err) <= FP32_TOL


def test_bf16_within_bound():
    q, k, v = _qkv(5, (2, 150, 2, 32), (2, 300, 2, 32), jnp.bfloat16)
    keep = _random_keep(6, 2, 300)
    fn = functools.partial(tpu_attention, kv_keep=keep, interpret=True, block_sizes=SMALL_BLOCKS)
    ref = functools.partial(_xla_masked, kv_keep=keep)
    xla_bf16 = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=keep[:, None, None, :], implementation="xla")
    out = fn(q, k, v)
    assert out.dtype == jnp.bfloat16
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    want, want_grads = ref(*f32), _grads(ref, *f32)
    err = _max_abs(out, want)
    grad_err = _grad_rel_errors(_grads(fn, q, k, v), want_grads)
    xla_err = _max_abs(xla_bf16(q, k, v), want)
    xla_grad_err = _grad_rel_errors(_grads(xla_bf16, q, k, v), want_grads)
    print(
        f"bf16 (outputs up to {float(jnp.max(jnp.abs(want))):.2f}): forward max abs {err:.1e} (XLA bf16 {xla_err:.1e}), "
        f"gradient rel {max(grad_err):.1e} (XLA bf16 {max(xla_grad_err):.1e})"
    )
    assert err <= BF16_TOL
    assert max(grad_err) <= BF16_TOL


def test_interpret_false_runs_under_forced_interpret_mode():
    """The interpret=False program (what the dispatch calls) runs on CPU inside force_tpu_interpret_mode."""
    from jax.experimental.pallas import tpu as pltpu

    q, k, v = _qkv(11, (1, 130, 2, 32), (1, 130, 2, 32))
    with pltpu.force_tpu_interpret_mode(True):
        out = tpu_attention(q, k, v)
    assert _max_abs(out, _xla_masked(q, k, v)) <= FP32_TOL


def test_unpadded_head_dim_matches():
    """pad_head_dim=False (D = 32 blocks as is) computes the same attention; whether Mosaic compiles it is UNKNOWN."""
    q, k, v = _qkv(8, (2, 150, 2, 32), (2, 300, 2, 32))
    keep = _random_keep(9, 2, 300)
    out = tpu_attention(q, k, v, kv_keep=keep, interpret=True, block_sizes=SMALL_BLOCKS, pad_head_dim=False)
    assert _max_abs(out, _xla_masked(q, k, v, keep)) <= FP32_TOL


def test_scale_argument():
    q, k, v = _qkv(10, (1, 130, 1, 32), (1, 130, 1, 32))
    out = tpu_attention(q, k, v, scale=0.5, interpret=True)
    ref = jax.nn.dot_product_attention(q, k, v, scale=0.5, implementation="xla")
    assert _max_abs(out, ref) <= FP32_TOL


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (((2, 8, 2, 32), (2, 8, 2, 32), (2, 8, 2)), {}, "shape \\(B, N, H, D\\)"),
        (((2, 8, 2, 32), (2, 8, 2, 32), (2, 9, 2, 32)), {}, "k and v must share"),
        (((2, 8, 2, 32), (2, 8, 4, 32), (2, 8, 4, 32)), {}, "agree on batch, heads and head dim"),
        (((2, 8, 2, 32), (2, 8, 2, 32), (2, 8, 2, 32)), {"kv_keep": np.ones((2, 7), bool)}, "kv_keep must have shape"),
        (((2, 8, 2, 32), (2, 8, 2, 32), (2, 8, 2, 32)), {"kv_keep": np.ones((2, 8), np.int32)}, "must be boolean"),
        (((2, 8, 2, 32), (2, 8, 2, 32), (2, 8, 2, 32)), {"block_sizes": (128, 128)}, "splash BlockSizes"),
    ],
)
def test_bad_inputs_raise(args, kwargs, match):
    q, k, v = (jnp.zeros(s, jnp.float32) for s in args)
    with pytest.raises(ValueError, match=match):
        tpu_attention(q, k, v, interpret=True, **kwargs)


def test_bad_dtype_raises():
    q = jnp.zeros((1, 8, 1, 32), jnp.float16)
    with pytest.raises(ValueError, match="bfloat16 or float32"):
        tpu_attention(q, q, q, interpret=True)
    with pytest.raises(ValueError, match="share one dtype"):
        tpu_attention(q.astype(jnp.float32), q.astype(jnp.bfloat16), q.astype(jnp.bfloat16), interpret=True)


def test_default_block_sizes():
    """The documented picks (block, padded length) at the real geometries; all multiples of 128."""
    picks = {
        (n, jnp.dtype(dt).name, d): tpu.default_block_sizes(n, n, d, dt).block_q
        for n in (100, 1000, 1800, 7200, 32000, 128000)
        for dt in (jnp.bfloat16, jnp.float32)
        for d in (128, 512)
    }
    assert all(b % 128 == 0 for b in picks.values())
    assert picks[(100, "bfloat16", 128)] == 128
    assert picks[(1000, "bfloat16", 128)] == 1024 and picks[(1000, "float32", 128)] == 512
    assert picks[(1800, "bfloat16", 128)] == 640  # S = 1800 -> 1920, not 2048
    assert picks[(7200, "bfloat16", 128)] == 768
    assert picks[(32000, "bfloat16", 128)] == 1024
    assert picks[(128000, "bfloat16", 512)] == 640 and picks[(128000, "float32", 512)] == 512
    sizes = tpu.default_block_sizes(1000, 1800, 128, jnp.bfloat16)
    assert sizes.has_backward_blocks and (sizes.block_q, sizes.block_kv) == (1024, 640)


# --- export_check -------------------------------------------------------------------------------------------


def test_export_check_parses_tensor_types():
    text = (
        "func.func @main(%a: tensor<16x8x1920x128xbf16>, %b: tensor<16x1800xi1>) -> tensor<f32> "
        "%c = stablehlo.constant dense<0> : tensor<4xcomplex<f32>> %d : tensor<1024x128xi32> tensor<2xindex>"
    )
    found = {str(t): t.nbytes for t in export_check.tensors(text)}
    assert found == {
        "16x8x1920x128xbf16": 16 * 8 * 1920 * 128 * 2,
        "16x1800xi1": 16 * 1800,
        "f32": 4,
        "4xcomplex<f32>": 32,
        "1024x128xi32": 1024 * 128 * 4,
        "2xindex": 16,
    }
    assert export_check.largest_tensor_bytes(text) == (16 * 8 * 1920 * 128 * 2, "16x8x1920x128xbf16")
    assert [str(t) for t in export_check.tensors_reaching(text, 1920 * 128)] == ["16x8x1920x128xbf16"]
    assert export_check.largest_tensor_bytes("no tensors") == (0, "")
    with pytest.raises(ValueError, match="dynamic dimension"):
        export_check.tensors("tensor<?x8xf32>")


def test_export_check_finds_materialised_logits():
    """Negative control: XLA's one-shot attention exported for TPU holds the (B, H, N, N) f32 logits."""
    spec = jax.ShapeDtypeStruct((2, 512, 4, 32), jnp.bfloat16)
    exp = export_check.export_for_platform(
        functools.partial(jax.nn.dot_product_attention, implementation="xla"), spec, spec, spec, platforms="tpu"
    )
    assert exp.platforms == ("tpu",)
    text = exp.mlir_module()
    nbytes, shape = export_check.largest_tensor_bytes(text)
    assert nbytes == 2 * 4 * 512 * 512 * 4 and shape.endswith("2x4x512x512xf32")
    assert str(export_check.tensors_reaching(text, 512 * 512)[0]) == shape


# --- tpu_attention exported for TPU at the real geometries ------------------------------------------------

# name: (q shape, k/v shape, with kv_keep, dtype); rows: B*F = 16, H = 8, D = 32 (80 s: T = 1000, S = 1800;
# 320 s: T = 4000, S = 7200); dense level 1 at 320 s: B = 2 (CFG), N = 32000; VAE mid: 1 head, D = 512.
EXPORT_CASES = {
    "rows-80s-official": ((16, 1000, 8, 32), (16, 1800, 8, 32), False, jnp.bfloat16),
    "rows-80s-exact": ((16, 1000, 8, 32), (16, 1800, 8, 32), True, jnp.bfloat16),
    "rows-320s-exact": ((16, 4000, 8, 32), (16, 7200, 8, 32), True, jnp.bfloat16),
    "dense-320s-level1": ((2, 32000, 8, 32), (2, 32000, 8, 32), False, jnp.bfloat16),
    "vae-mid-80s": ((1, 32000, 1, 512), (1, 32000, 1, 512), False, jnp.bfloat16),
    "vae-mid-320s": ((1, 128000, 1, 512), (1, 128000, 1, 512), False, jnp.bfloat16),
    "vae-mid-320s-fp32": ((1, 128000, 1, 512), (1, 128000, 1, 512), False, jnp.float32),
}


def _export_tpu_attention(q_shape, kv_shape, with_keep, dtype, grad=False):
    specs = [jax.ShapeDtypeStruct(q_shape, dtype), *(jax.ShapeDtypeStruct(kv_shape, dtype),) * 2]
    if with_keep:
        specs.append(jax.ShapeDtypeStruct(kv_shape[:2], jnp.bool_))
    fn = lambda q, k, v, keep=None: tpu_attention(q, k, v, kv_keep=keep)
    if grad:
        forward = fn
        fn = lambda q, k, v, keep=None: jax.grad(
            lambda q, k, v: jnp.sum(forward(q, k, v, keep).astype(jnp.float32)), argnums=(0, 1, 2)
        )(q, k, v)
    return export_check.export_for_platform(fn, *specs, platforms="tpu")


def _check_exported(name, exp, q_shape, kv_shape):
    text = exp.mlir_module()
    nbytes, shape = export_check.largest_tensor_bytes(text)
    logits = q_shape[1] * kv_shape[1]
    print(f"{name}: largest tensor {shape} = {nbytes / 2**20:.1f} MiB (logits would be {logits:,} per head)")
    assert "tpu_custom_call" in text  # the Mosaic kernel, not an XLA fallback
    assert nbytes <= 2 * GiB
    assert export_check.tensors_reaching(text, logits) == []


@pytest.mark.parametrize("name", list(EXPORT_CASES))
def test_export_tpu_no_logits(name):
    q_shape, kv_shape, with_keep, dtype = EXPORT_CASES[name]
    _check_exported(name, _export_tpu_attention(q_shape, kv_shape, with_keep, dtype), q_shape, kv_shape)


def test_export_tpu_gradient_no_logits():
    """The backward kernels (dq, dkv) lower for TPU too, at the 80 s exact-mode row geometry."""
    q_shape, kv_shape, _, dtype = EXPORT_CASES["rows-80s-exact"]
    exp = _export_tpu_attention(q_shape, kv_shape, True, dtype, grad=True)
    assert exp.mlir_module().count("tpu_custom_call") >= 3  # forward, dq, dkv
    _check_exported("rows-80s-exact gradient", exp, q_shape, kv_shape)
