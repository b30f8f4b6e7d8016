"""One clip across devices (litefocus_jax.pipelines.audioldm2.parallel): the whole tiny pipeline on ("data", "seq")
meshes of fake CPU devices equals the one-device run; the compiled denoise program has the expected collectives, no
array with two token-sized dimensions, and less per-device temporary memory as "seq" grows.

Fake devices need XLA_FLAGS before jax starts, so each device count runs in one subprocess (this file, run as a
script) that compiles as little as it can: one prompt, 1 step, T = 256 latent frames (10.24 s: a multiple of 8 x seq
for seq <= 8, and long enough that activations, not the weights' copies, dominate XLA's temporary memory). The
8-device process compares with the one-device outputs the 4-device process saved.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from litefocus_jax.pipelines.audioldm2.parallel import check_length, make_mesh, parse_mesh_spec, time_multiple

ROOT = Path(__file__).resolve().parents[2]
PROMPT, SECONDS, STEPS = "a dog barks", 10.24, 1
# Each mode makes some levels LiteFocus and leaves the others dense, so every run exercises both sharded kernels.
MODES = {"official": dict(levels=(1,)), "exact": dict(levels=(2, "mid"), duplicates="exact")}
COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all")


# ------------------------------------------------------------------------------------------------ worker


def _census(hlo: str) -> dict:
    return {op: len(re.findall(rf"\b{op}(?:-start)?\(", hlo)) for op in COLLECTIVES}


def _max_token_dims(hlo: str, n_tokens: int) -> int:
    """The most dimensions >= n_tokens that any array shape in the HLO text has."""
    shapes = re.findall(r"\[([0-9,]+)\]", hlo)
    return max((sum(int(d) >= n_tokens for d in s.split(",")) for s in shapes), default=0)


def _unet_counts(pipe) -> dict:
    from flax import nnx

    norms = convs3 = 0
    for _, node in nnx.iter_graph(pipe._unet):
        norms += isinstance(node, nnx.GroupNorm)
        convs3 += isinstance(node, nnx.Conv) and tuple(node.kernel_size) == (3, 3)
    return dict(self_attention=sum(pipe.unet_config.self_attention_calls().values()), group_norms=norms, convs3=convs3)


def _denoise_compiled(pipe, litefocus, mesh):
    """The denoise program `pipe(...)` just ran, lowered with the same arguments (a compile-cache hit)."""
    import jax
    import jax.numpy as jnp

    from litefocus_jax.pipelines.audioldm2 import parallel

    frames = pipe.latent_frames(SECONDS)[0]
    shape = (1, frames, pipe.mel_bins // pipe.vae_scale_factor, pipe.unet_config.in_channels)
    lf, comp = pipe._comp_schedule(litefocus, shape[1:], STEPS)
    t5, t5_mask, generated = pipe.encode_prompt([PROMPT], [""], 1, True)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(1))
    latents = jax.vmap(lambda k: jax.random.normal(k, shape[1:], jnp.float32))(keys)
    params = parallel.params(pipe, mesh, "unet")["unet"]
    fn = pipe._denoise_fn(STEPS, True, lf, 0.0, mesh)
    return fn.lower(params, latents, t5, t5_mask, generated, jnp.asarray(3.5, jnp.float32), comp, keys).compile()


def _program_report(pipe, litefocus, mesh, n_tokens) -> dict:
    compiled = _denoise_compiled(pipe, litefocus, mesh)
    hlo = compiled.as_text()
    return dict(
        census=_census(hlo),
        token_dims=_max_token_dims(hlo, n_tokens),
        temp_bytes=int(compiled.memory_analysis().temp_size_in_bytes),
    )


def worker(devices: int, folder: Path) -> None:
    """Run in a subprocess with `devices` fake CPU devices; writes report-<devices>.json (and reference.npz)."""
    import jax
    import numpy as np

    jax.config.update("jax_default_matmul_precision", "highest")
    from litefocus_jax.litefocus.plan import LiteFocusConfig
    from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline

    assert jax.device_count() == devices, jax.devices()
    pipe = build_tiny_pipeline()
    frames = pipe.latent_frames(SECONDS)[0]
    n_tokens = (frames // 2) * (pipe.mel_bins // pipe.vae_scale_factor // 2)  # level 1: the largest self-attention
    run = dict(audio_length_in_s=SECONDS, num_inference_steps=STEPS, output_latents=True)
    report = dict(unet=_unet_counts(pipe), n_tokens=n_tokens, modes={})
    meshes = {"official": (2, 2), "exact": (1, 4)} if devices == 4 else {"exact": (1, 8)}
    reference = {} if devices == 4 else dict(np.load(folder / "reference.npz"))
    for mode, shape in meshes.items():
        litefocus = LiteFocusConfig(**MODES[mode])
        mesh = make_mesh(*shape)
        if devices == 4:
            ref = pipe(PROMPT, litefocus=litefocus, **run)
            reference[f"{mode}_latents"], reference[f"{mode}_audio"] = ref.latents, ref.audios
        out = pipe(PROMPT, litefocus=litefocus, mesh=mesh, **run)
        entry = dict(mesh=list(shape), sharded=_program_report(pipe, litefocus, mesh, n_tokens))
        for name, got in (("latents", out.latents), ("audio", out.audios)):
            want = reference[f"{mode}_{name}"]
            entry[f"{name}_rel"] = float(np.abs(got - want).max() / np.abs(want).max())
            entry[f"{name}_peak"] = float(np.abs(want).max())
        if devices == 4:
            entry["single"] = _program_report(pipe, litefocus, None, n_tokens)
        report["modes"][mode] = entry
    if devices == 4:
        np.savez(folder / "reference.npz", **reference)
        try:
            pipe(PROMPT, audio_length_in_s=3.0, num_inference_steps=STEPS, mesh=make_mesh(1, 4))
        except ValueError as e:
            report["bad_length_error"] = str(e)
    (folder / f"report-{devices}.json").write_text(json.dumps(report, indent=1))


# ------------------------------------------------------------------------------------------------ tests


def _run_worker(devices: int, folder: Path) -> dict:
    # LLVM's cheaper passes cut the compile time (most of this test) by ~25 %; both sides of every comparison share them
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    env = dict(os.environ, XLA_FLAGS=flags + " --xla_llvm_disable_expensive_passes=true", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, __file__, str(devices), str(folder)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((folder / f"report-{devices}.json").read_text())


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seq")
    four = _run_worker(4, folder)
    return four, _run_worker(8, folder)


def test_sharded_pipeline_equals_one_device(reports):
    for report in reports:
        for mode, entry in report["modes"].items():
            assert entry["latents_rel"] <= 1e-5, (mode, entry)
            assert entry["audio_rel"] <= 1e-5, (mode, entry)


def test_collectives_are_counted(reports):
    """2 K/V all-gathers per self-attention, 2 all-reduces per GroupNorm, at most 2 halo permutes per 3x3 conv; with
    data = 2 the guidance concat/split adds 2 all-to-all, 1 permute and 1 all-reduce (SCALE.md E14)."""
    for report in reports:
        unet = report["unet"]
        for mode, entry in report["modes"].items():
            census = entry["sharded"]["census"]
            cfg = entry["mesh"][0] > 1
            assert census["all-gather"] == 2 * unet["self_attention"], (mode, census, unet)
            assert census["all-reduce"] == 2 * unet["group_norms"] + cfg, (mode, census, unet)
            assert 0 < census["collective-permute"] <= 2 * unet["convs3"] + cfg, (mode, census, unet)
            assert census["all-to-all"] == 2 * cfg, (mode, census)
            if "single" in entry:
                assert all(v == 0 for v in entry["single"]["census"].values()), entry["single"]


def test_no_array_with_two_token_dims(reports):
    four, eight = reports
    # dense attention at level 1 ("exact" keeps it dense): the one-device program has the N x N logits
    assert four["modes"]["exact"]["single"]["token_dims"] >= 2
    for report in reports:
        for mode, entry in report["modes"].items():
            assert entry["sharded"]["token_dims"] <= 1, (mode, entry)


def test_memory_falls_with_seq(reports):
    four, eight = reports
    one = four["modes"]["exact"]["single"]["temp_bytes"]
    seq4 = four["modes"]["exact"]["sharded"]["temp_bytes"]
    seq8 = eight["modes"]["exact"]["sharded"]["temp_bytes"]
    assert seq8 < seq4 < one, (one, seq4, seq8)


def test_mesh_spec_and_length_rule():
    assert parse_mesh_spec("data=2,seq=4") == (2, 4)
    assert parse_mesh_spec("seq=8") == (1, 8)
    for bad in ("data=2,seq", "rows=2", "seq=0", "seq=2,seq=4", ""):
        with pytest.raises(ValueError, match="data=D,seq=S|>= 1"):
            parse_mesh_spec(bad)
    with pytest.raises(ValueError, match="devices but"):
        make_mesh(4096, 1)
    pipe = SimpleNamespace(unet_config=SimpleNamespace(block_out_channels=(16, 32, 48, 64)), vae_scale_factor=4)
    pipe.vocoder_upsample_factor = 0.01
    assert time_multiple(pipe.unet_config, 4) == 32
    mesh = SimpleNamespace(axis_names=("data", "seq"), shape={"data": 1, "seq": 4})
    check_length(pipe, 64, mesh)
    check_length(pipe, 75, SimpleNamespace(axis_names=("data", "seq"), shape={"data": 4, "seq": 1}))
    with pytest.raises(ValueError, match=r"nearest valid lengths are 2\.56 s \(64 frames\) or 3\.84 s \(96 frames\)"):
        check_length(pipe, 75, mesh)
    with pytest.raises(ValueError, match=r"\('data', 'seq'\) mesh"):
        check_length(pipe, 64, SimpleNamespace(axis_names=("data",), shape={"data": 4}))


def test_pipeline_rejects_a_length_before_encoding(reports):
    assert "nearest valid lengths are 2.56 s (64 frames) or 3.84 s (96 frames)" in reports[0]["bad_length_error"], reports[0]


if __name__ == "__main__":
    worker(int(sys.argv[1]), Path(sys.argv[2]))
