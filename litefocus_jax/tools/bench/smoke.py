"""Correctness smoke for the accelerator attention kernels, at small shapes, in seconds: every implementation of
`litefocus_jax.kernels.attention` (dense, LiteFocus official, LiteFocus exact) against the one-shot XLA path in
float32 on the same inputs. An implementation that the platform does not offer is recorded as `unsupported`
(the kernels raise NotImplementedError / ValueError for those), never a crash.
"""

from __future__ import annotations

import re
import time

import numpy as np

from litefocus_jax.tools.bench.isolate import failure_status, tail

# None = the library's choice for the platform; "pallas" is the TPU kernel (unsupported elsewhere).
SMOKE_IMPLEMENTATIONS = (None, "xla", "cudnn", "chunked", "pallas")
FUNCTIONS = ("dense", "litefocus-official", "litefocus-exact")
# Relative L2 error against the float32 XLA reference that still counts as agreeing: a bf16 kernel lands at
# 1e-3..1e-2 (../shared/reference/ACCELERATORS.md §5), float32 paths differ by rounding only.
TOLERANCE = {"bfloat16": 3e-2, "float16": 1e-2, "float32": 1e-4}
SMOKE_SHAPE = dict(batch=2, time=32, freq_bins=8, heads=4, head_dim=32, ratio=0.1)
# Messages of backends that lack a kernel (e.g. "cuDNN is not detected" on CPU).
_UNSUPPORTED_TEXT = re.compile(r"not detected|not supported|unsupported|only .* supported|not available", re.IGNORECASE)


def smoke_inputs(shape: dict, seed: int):
    """q, k, v float32 (B, T*F, H, D) and a compensation index (K,) of distinct tokens."""
    rng = np.random.default_rng(seed)
    n = shape["time"] * shape["freq_bins"]
    q, k, v = (rng.standard_normal((shape["batch"], n, shape["heads"], shape["head_dim"]), dtype=np.float32) for _ in range(3))
    return q, k, v, rng.permutation(n)[: int(n * shape["ratio"])].astype(np.int32)


def _attention(function: str, implementation, freq_bins: int):
    from litefocus_jax.kernels.attention import dot_product_attention, litefocus_attention

    if function == "dense":
        return lambda q, k, v, idx: dot_product_attention(q, k, v, implementation=implementation)
    duplicates = function.split("-", 1)[1]
    return lambda q, k, v, idx: litefocus_attention(
        q, k, v, freq_bins=freq_bins, comp_index=idx, duplicates=duplicates, implementation=implementation
    )


def _run(function: str, implementation, inputs, dtype: str, freq_bins: int) -> np.ndarray:
    import jax
    import jax.numpy as jnp

    q, k, v, idx = inputs
    args = [jnp.asarray(x, jnp.dtype(dtype)) for x in (q, k, v)]
    out = jax.jit(_attention(function, implementation, freq_bins))(*args, jnp.asarray(idx))
    return np.asarray(jax.block_until_ready(out), np.float64)


def classify(error: BaseException) -> str:
    """unsupported (the kernel is not offered here), oom, or error."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, NotImplementedError | ValueError) or _UNSUPPORTED_TEXT.search(str(error)):
        return "unsupported"
    return failure_status(text)


def smoke_cases(implementations=SMOKE_IMPLEMENTATIONS, functions=FUNCTIONS) -> list[dict]:
    return [
        dict(id=f"{function}:{implementation or 'default'}", function=function, implementation=implementation)
        for implementation in implementations
        for function in functions
    ]


def run_case(case: dict, dtype: str, seed: int, references: dict, shape: dict = SMOKE_SHAPE) -> dict:
    """One kernel against the float32 XLA reference of its function (computed once, kept in `references`).

    -> the case with status, max_abs_err, rel_l2_err, tolerance, agrees and wall_s.
    """
    start = time.perf_counter()
    inputs = smoke_inputs(shape, seed)
    out = dict(case, dtype=dtype, shape=dict(shape), reason=None, max_abs_err=None, rel_l2_err=None)
    out.update(tolerance=TOLERANCE.get(dtype), agrees=None)
    try:
        if case["function"] not in references:
            references[case["function"]] = _run(case["function"], "xla", inputs, "float32", shape["freq_bins"])
        ref = references[case["function"]]
        got = _run(case["function"], case["implementation"], inputs, dtype, shape["freq_bins"])
    except Exception as e:  # noqa: BLE001 - an unsupported or failing kernel is a result
        out.update(status=classify(e), reason=tail(f"{type(e).__name__}: {e}", 600))
    else:
        diff = got - ref
        err, rel = float(np.abs(diff).max()), float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-30))
        out.update(status="ok", max_abs_err=err, rel_l2_err=rel, agrees=bool(np.isfinite(rel) and rel <= out["tolerance"]))
    out["wall_s"] = time.perf_counter() - start
    return out
