"""Sequence-parallel self-attention (litefocus_jax.kernels.sequence_parallel) on 4 fake CPU devices: dense and every
LiteFocus form equal the one-device kernels, each call is 2 all-gathers over "seq" and nothing else, and a time axis
that does not split evenly is a clear error; and, lowered for TPU from this CPU machine at the level-1 geometry of 80 s,
the Pallas kernel runs inside the shard_map with no logits-sized array. Fake devices need XLA_FLAGS before jax starts:
one subprocess (this file run as a script) does every check and reports JSON."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from litefocus_jax.kernels.sequence_parallel import current_mesh, is_sequence_mesh, sequence_parallel

ROOT = Path(__file__).resolve().parents[2]
B, T, F, H, D = 2, 16, 4, 2, 8  # N = 64 tokens; K = 6 compensation tokens
LITEFOCUS_FORMS = {
    "official": dict(duplicates="official"),
    "exact": dict(duplicates="exact"),
    "rows_only": dict(cross_frequency=False),
    "comp_only": dict(same_frequency=False),
}


def worker() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_default_matmul_precision", "highest")
    from litefocus_jax.kernels import sequence_parallel as sp
    from litefocus_jax.kernels.attention import dot_product_attention, litefocus_attention
    from litefocus_jax.pipelines.audioldm2.parallel import make_mesh

    q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, B, T * F, H, D))
    comp = jnp.asarray(np.random.default_rng(0).permutation(T * F)[:6], jnp.int32)
    out: dict = {"errors": {}, "census": {}}

    def rel(a, b):
        return float(jnp.abs(a - b).max() / jnp.abs(b).max())

    cases = {"dense None": None, "dense xla": "xla", **{name: name for name in LITEFOCUS_FORMS}}

    def kernel(case, mesh=None):
        """(q, k, v, comp) -> attention of `case`, on one device or sharded over `mesh`."""
        if case.startswith("dense"):
            one = partial(dot_product_attention, scale=D**-0.5, implementation=cases[case])
            many = partial(sp.attend, mesh=mesh, scale=D**-0.5, implementation=cases[case])
            return lambda q, k, v, c: (one if mesh is None else many)(q, k, v)
        form = dict(freq_bins=F, **LITEFOCUS_FORMS[case])
        fn = partial(litefocus_attention, **form) if mesh is None else partial(sp.litefocus_attention, mesh=mesh, **form)
        return lambda q, k, v, c: fn(q, k, v, comp_index=c)

    want = {case: jax.jit(kernel(case))(q, k, v, comp) for case in cases}
    for shape, names in (((1, 4), tuple(cases)), ((2, 2), ("dense None", "exact"))):
        mesh = make_mesh(*shape)
        for case in names:
            compiled = jax.jit(kernel(case, mesh)).lower(q, k, v, comp).compile()
            out["errors"][f"{case} {shape}"] = rel(compiled(q, k, v, comp), want[case])
            out["census"][f"{case} {shape}"] = census(compiled.as_text())
    try:  # T = 6 frames cannot split into 4 blocks of whole frames (N = 24 tokens would)
        qs = q[:, : 6 * F]
        sp.litefocus_attention(qs, qs, qs, mesh=make_mesh(1, 4), freq_bins=F, comp_index=comp % (6 * F))
    except ValueError as e:
        out["uneven_error"] = str(e)
    out["tpu"] = tpu_exports(make_mesh(1, 4))
    return out


def tpu_exports(mesh) -> dict:
    """The level-1 self-attention at 80 s (B = 2, T = 1000 frames x F = 8 bins, 8 heads of 32, K = 800, bf16) on
    seq = 4, exported for TPU: {case: devices, all-gathers, Pallas calls, largest array, logits-sized arrays}."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from litefocus_jax.kernels import export_check
    from litefocus_jax.kernels import sequence_parallel as sp

    n, scale = 8000, 32**-0.5
    x = jax.ShapeDtypeStruct((2, n, 8, 32), jnp.bfloat16, sharding=NamedSharding(mesh, P(None, "seq")))
    idx = jax.ShapeDtypeStruct((800,), jnp.int32, sharding=NamedSharding(mesh, P()))

    def rows(mode):
        return lambda q, k, v, i: sp.litefocus_attention(
            q, k, v, mesh=mesh, freq_bins=8, comp_index=i, duplicates=mode, scale=scale
        )

    cases = {
        "dense": (lambda q, k, v: sp.attend(q, k, v, mesh=mesh, scale=scale), (x, x, x)),
        "official": (rows("official"), (x, x, x, idx)),
        "exact": (rows("exact"), (x, x, x, idx)),
    }
    out = {}
    for name, (fn, args) in cases.items():
        exported = export_check.export_for_platform(fn, *args, platforms="tpu")
        text = exported.mlir_module()
        out[name] = dict(
            devices=exported.nr_devices,
            all_gathers=text.count("stablehlo.all_gather"),
            pallas=text.count("tpu_custom_call"),
            largest=export_check.largest_tensor_bytes(text)[1],
            logits=[str(t) for t in export_check.tensors_reaching(text, n // 4 * n)],  # local queries x all keys
        )
    return out


def census(hlo: str) -> dict:
    return {
        op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo))
        for op in ("all-gather", "all-reduce", "collective-permute", "all-to-all")
    }


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_attention_equals_one_device(report):
    assert len(report["errors"]) == 2 + len(LITEFOCUS_FORMS) + 2
    for case, err in report["errors"].items():
        assert err <= 1e-5, (case, err)


def test_two_all_gathers_per_call(report):
    for case, counts in report["census"].items():
        assert counts == {"all-gather": 2, "all-reduce": 0, "collective-permute": 0, "all-to-all": 0}, (case, counts)


def test_uneven_time_axis_is_a_clear_error(report):
    assert "the time frames T = 6 does not divide into seq = 4 equal blocks" in report["uneven_error"]


def test_lowers_for_tpu_with_pallas_inside_and_no_logits(report):
    """A TPU program from CPU (jax.export): the Pallas kernel inside the shard_map, K and V gathered, and no array
    as large as the local logits (2000 x 8000 per head) in HBM; the largest are the (gathered) K/V rows."""
    for case, got in report["tpu"].items():
        assert got["devices"] == 4 and got["all_gathers"] == 2 and got["pallas"] == 1, (case, got)
        assert got["logits"] == [], (case, got)
    assert report["tpu"]["official"]["largest"] == "16x8x1920x128xbf16", report["tpu"]  # B*F rows, 1000 + 800 keys


def test_context_is_off_without_a_seq_axis():
    class Mesh:
        def __init__(self, **shape):
            self.axis_names, self.shape = tuple(shape), shape

    assert current_mesh() is None
    assert not is_sequence_mesh(None) and not is_sequence_mesh(Mesh(data=4)) and not is_sequence_mesh(Mesh(data=2, seq=1))
    with sequence_parallel(Mesh(data=4, seq=1)):
        assert current_mesh() is None  # the single-device program is unchanged
    mesh = Mesh(data=1, seq=4)
    with sequence_parallel(mesh):
        assert current_mesh() is mesh
        with sequence_parallel(None):
            assert current_mesh() is None
        assert current_mesh() is mesh
    assert current_mesh() is None


if __name__ == "__main__":
    print(json.dumps(worker()))
