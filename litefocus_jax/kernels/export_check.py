"""Memory checks of a program as lowered for a platform, from any machine (no accelerator needed).

`jax.export` lowers a jitted function for "tpu" or "cuda" on a CPU machine. In the StableHLO text of the
result every array the program holds in device memory (HBM) appears as a ranked `tensor<AxBx...xDT>` type,
while a Pallas/Mosaic kernel's tiles stay inside its serialized payload. So the largest tensor type in the
text bounds the largest array of the program, and an attention that materialises its logits shows up as a
tensor with two dims whose product is Nq x Nk. Usage:

    exp = export_for_platform(fn, jax.ShapeDtypeStruct(shape, jnp.bfloat16), ..., platforms="tpu")
    nbytes, shape = largest_tensor_bytes(exp.mlir_module())
    assert not tensors_reaching(exp.mlir_module(), n_q * n_k)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import jax

# tensor<16x8x1920x128xbf16>, tensor<f32> (a scalar), tensor<4xcomplex<f32>>; a dynamic dim is `?`.
_TENSOR = re.compile(r"tensor<((?:[0-9?]+x)*)([A-Za-z][A-Za-z0-9]*(?:<[A-Za-z0-9]+>)?)")
_BITS = re.compile(r"^(?:[a-z]+)(\d+)")


class Tensor(NamedTuple):
    """One tensor type of the program: its shape, element type (StableHLO spelling) and size in bytes."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int

    def __str__(self) -> str:
        return "x".join([*map(str, self.shape), self.dtype])


def tensors(mlir_text: str) -> list[Tensor]:
    """Every distinct tensor type in `mlir_text`, largest first.

    Raises ValueError for a dynamic dimension (`?`): its size, hence the program's memory, is unknown, so
    export with concrete `ShapeDtypeStruct`s.
    """
    found = {}
    for dims, dtype in _TENSOR.findall(mlir_text):
        dims = dims.rstrip("x").split("x") if dims else []
        if "?" in dims:
            raise ValueError(
                f"export_check: tensor<{'x'.join(dims)}x{dtype}> has a dynamic dimension; export with concrete shapes."
            )
        shape = tuple(int(d) for d in dims)
        if (shape, dtype) not in found:
            found[(shape, dtype)] = Tensor(shape, dtype, math.ceil(math.prod(shape) * _element_bits(dtype) / 8))
    return sorted(found.values(), key=lambda t: (-t.nbytes, t.shape, t.dtype))


def largest_tensor_bytes(mlir_text: str) -> tuple[int, str]:
    """(bytes, "AxBx...xDT") of the largest tensor type in `mlir_text`; (0, "") if there is none."""
    all_tensors = tensors(mlir_text)
    if not all_tensors:
        return 0, ""
    return all_tensors[0].nbytes, str(all_tensors[0])


def tensors_reaching(mlir_text: str, size: int) -> list[Tensor]:
    """The tensors with two dims whose product is >= `size`, e.g. size = Nq * Nk finds materialised logits
    whatever their layout ((B, H, Nq, Nk), (B*H, Nq, Nk), ...)."""
    return [t for t in tensors(mlir_text) if _max_pair_product(t.shape) >= size]


def export_for_platform(fn, *args, platforms: str | Sequence[str] = "tpu", **kwargs) -> jax.export.Exported:
    """`jax.export` of `fn` (jitted here unless it already is) for `platforms`, e.g. "tpu" or "cuda".

    `args`/`kwargs` are `jax.ShapeDtypeStruct`s (or arrays) as `fn` takes them; nothing is allocated or run.
    Pallas TPU kernels must be called with interpret=False, or the interpreter's XLA loop is exported.
    """
    platforms = [platforms] if isinstance(platforms, str) else list(platforms)
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return jax.export.export(jitted, platforms=platforms)(*args, **kwargs)


def _element_bits(dtype: str) -> int:
    if dtype == "i1":  # XLA stores booleans as one byte each
        return 8
    if dtype == "index":
        return 64
    if dtype.startswith("complex<"):
        return 2 * _element_bits(dtype[len("complex<") : -1])
    match = _BITS.match(dtype)
    if match is None:
        raise ValueError(f"export_check: unknown element type {dtype!r}; extend _element_bits.")
    return int(match.group(1))


def _max_pair_product(shape: tuple[int, ...]) -> int:
    if len(shape) < 2:
        return 0
    largest = sorted(shape)[-2:]
    return largest[0] * largest[1]
