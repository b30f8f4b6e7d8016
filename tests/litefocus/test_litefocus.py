"""LiteFocus: configuration, call plans, seeded indices, and the UNet against diffusers running the
released algorithm (via ReleasedLiteFocusAttnProcessor) on the same indices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tiny_models import build_tiny_unet, jax_unet_out, make_inputs, torch_unet_out

import litefocus_jax as lj
from litefocus_jax.models.presets import unet_config
from litefocus_jax.tools import torch_reference

# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ratio=0.0), "ratio"),
        (dict(ratio=1.5), "ratio"),
        (dict(same_frequency=False, cross_frequency=False), "both False"),
        (dict(duplicates="twice"), "duplicates"),
        (dict(resample="sometimes"), "resample"),
        (dict(levels=(-1,)), "level"),
        (dict(levels=("top",)), "level"),
        (dict(levels=(1, 1)), "twice"),
        (dict(dense_at_or_below_s=-1.0), "dense_at_or_below_s"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lj.LiteFocusConfig(**kwargs)


def test_config_is_frozen_and_hashable():
    cfg = lj.LiteFocusConfig(levels=[1, "mid"])
    assert cfg.levels == (1, "mid")
    assert hash(cfg) == hash(lj.LiteFocusConfig(levels=(1, "mid")))
    with pytest.raises(AttributeError):
        cfg.ratio = 0.2


@pytest.mark.parametrize("level", [0, 4, 7])
def test_plan_rejects_a_level_the_unet_lacks(level):
    cfg = lj.UNetConfig.from_diffusers(unet_config("audioldm2"))
    with pytest.raises(ValueError, match=f"level {level}"):
        lj.make_plan(cfg, lj.LiteFocusConfig(levels=(level,)), (1, 2000, 16, 8))


# ------------------------------------------------------------------------------------------ plan


@pytest.mark.parametrize("preset,calls", [("audioldm2", 20), ("audioldm2-large", 60), ("audioldm2-tts", 15)])
def test_plan_level1_call_counts_at_80s(preset, calls):
    """Base: the released set, 20 sparse calls per UNet call (8 down, 12 up); large: every transformer
    layer of all 4 Transformer2D per resnet; T = 2000 latent frames is 80 s."""
    plan = lj.make_plan(lj.UNetConfig.from_diffusers(unet_config(preset)), lj.LiteFocusConfig(), (2, 2000, 16, 8))
    (lp,) = plan.levels
    assert (lp.level, lp.calls, lp.time, lp.freq_bins, lp.comp_tokens) == (1, calls, 1000, 8, 800)


def test_plan_other_levels_and_odd_lengths():
    cfg = lj.UNetConfig.from_diffusers(unet_config("audioldm2"))
    plan = lj.make_plan(cfg, lj.LiteFocusConfig(levels=(1, 2, "mid")), (1, 250, 16, 8))  # 10 s: odd halvings
    got = {lp.key: (lp.calls, lp.time, lp.freq_bins, lp.comp_tokens) for lp in plan.levels}
    assert got == {"1": (20, 125, 8, 100), "2": (20, 63, 4, 25), "mid": (4, 32, 2, 6)}


def test_length_rule_keeps_short_audio_dense():
    cfg = lj.UNetConfig.from_diffusers(unet_config("audioldm2"))
    lf = lj.LiteFocusConfig(dense_at_or_below_s=10.24)
    assert not lj.make_plan(cfg, lf, (1, 256, 16, 8)).active  # exactly 10.24 s
    assert lj.make_plan(cfg, lf, (1, 257, 16, 8)).active


# ------------------------------------------------------------------------------------------ indices


def _plan(resample="per_call", seed=0):
    cfg = lj.UNetConfig.from_diffusers(unet_config("audioldm2"))
    return lj.make_plan(cfg, lj.LiteFocusConfig(resample=resample, seed=seed), (1, 500, 16, 8))


def test_indices_per_call_are_fresh_valid_subsets():
    idx = lj.make_comp_indices(_plan(), num_steps=3)["1"]
    assert idx.shape == (3, 20, 200) and idx.dtype == np.int32
    flat = idx.reshape(-1, 200)
    assert all(len(np.unique(r)) == 200 for r in flat) and flat.min() >= 0 and flat.max() < 2000
    assert len({r.tobytes() for r in flat}) == 60


def test_indices_policies():
    step = lj.make_comp_indices(_plan("per_step"), num_steps=3)["1"]
    assert (step == step[:, :1]).all() and not (step[0] == step[1]).all()
    fixed = lj.make_comp_indices(_plan("fixed"), num_steps=3)["1"]
    assert (fixed == fixed[0, 0]).all()


def test_indices_are_seeded():
    a, b = lj.make_comp_indices(_plan(seed=1), 2)["1"], lj.make_comp_indices(_plan(seed=1), 2)["1"]
    c = lj.make_comp_indices(_plan(seed=2), 2)["1"]
    np.testing.assert_array_equal(a, b)
    assert not (a == c).all()
    np.testing.assert_array_equal(lj.make_comp_indices(_plan(seed=1), 2, seed=2)["1"], c)


# ------------------------------------------------------------------------------------------ in the UNet


def install_released_litefocus(unet, indices: dict, freq_bins: dict, same_frequency=True, cross_frequency=True):
    """Give every self-attention of the chosen levels the released algorithm, fed `indices` in call order."""
    providers = {k: (lambda feed=iter(torch.from_numpy(np.asarray(r, np.int64))): next(feed)) for k, r in indices.items()}
    return torch_reference.install_released_litefocus(
        unet, providers, freq_bins, same_frequency=same_frequency, cross_frequency=cross_frequency
    )


@pytest.mark.parametrize(
    "name,levels,ratio",
    [("base", (1,), 0.1), ("large", (1,), 0.1), ("base", (1, 2, "mid"), 0.5), ("tts", (1,), 0.25)],
)
def test_unet_litefocus_matches_released_algorithm_in_diffusers(tiny_unet_dirs, name, levels, ratio):
    lf = lj.LiteFocusConfig(levels=levels, ratio=ratio, seed=5)
    unet = lj.load_unet(tiny_unet_dirs[name], litefocus=lf)
    x, gpt2, t5, mask = make_inputs(name, time=20)
    plan = lj.make_plan(unet.config, lf, (2, 20, 16, 8))
    indices = {k: v[0] for k, v in lj.make_comp_indices(plan, 1).items()}
    ref_unet = install_released_litefocus(build_tiny_unet(name), indices, {lp.key: lp.freq_bins for lp in plan.levels})
    ref = torch_unet_out(ref_unet, x, 501, gpt2, t5, mask)
    out = jax_unet_out(unet, x, 501, gpt2, t5, mask, comp_indices=indices)
    dense = torch_unet_out(build_tiny_unet(name), x, 501, gpt2, t5, mask)
    err = np.abs(out - ref).max()
    print(f"{name} levels={levels}: max abs error vs released {err:.2e}; LiteFocus - dense {np.abs(ref - dense).max():.2e}")
    assert err <= 1e-4
    assert np.abs(ref - dense).max() > 1e-3  # the sparse path really ran


def test_unet_litefocus_default_draws_from_seed(tiny_unet_dirs):
    x, gpt2, t5, mask = make_inputs("base", time=20)
    run = lambda seed: jax_unet_out(
        lj.load_unet(tiny_unet_dirs["base"], litefocus=lj.LiteFocusConfig(seed=seed)),  # noqa: E731
        x,
        501,
        gpt2,
        t5,
        mask,
    )
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_unet_litefocus_full_exact_union_is_dense(tiny_unet_dirs):
    """ratio 1.0, compensation only, exact: every key present once, i.e. dense attention."""
    lf = lj.LiteFocusConfig(same_frequency=False, ratio=1.0, duplicates="exact", levels=(1, 2, "mid"))
    x, gpt2, t5, mask = make_inputs("base", time=20)
    dense = jax_unet_out(lj.load_unet(tiny_unet_dirs["base"]), x, 501, gpt2, t5, mask)
    sparse = jax_unet_out(lj.load_unet(tiny_unet_dirs["base"], litefocus=lf), x, 501, gpt2, t5, mask)
    np.testing.assert_allclose(sparse, dense, atol=1e-5)


def test_length_rule_in_the_unet(tiny_unet_dirs):
    x, gpt2, t5, mask = make_inputs("base", time=20)  # 20 latent frames = 0.8 s
    dense = jax_unet_out(lj.load_unet(tiny_unet_dirs["base"]), x, 501, gpt2, t5, mask)
    ruled = lj.load_unet(tiny_unet_dirs["base"], litefocus=lj.LiteFocusConfig(dense_at_or_below_s=0.8))
    np.testing.assert_array_equal(jax_unet_out(ruled, x, 501, gpt2, t5, mask), dense)


def test_one_compiled_function_serves_every_seed(tiny_unet_dirs):
    lf = lj.LiteFocusConfig()
    unet = lj.load_unet(tiny_unet_dirs["base"], litefocus=lf)
    apply, params = unet.functional()
    x, gpt2, t5, mask = make_inputs("base", time=20)
    plan = lj.make_plan(unet.config, lf, (2, 20, 16, 8))
    step = jax.jit(lambda p, idx: apply(p, x.transpose(0, 2, 3, 1), 501, gpt2, t5, None, mask, comp_indices=idx))
    outs = [step(params, lj.indices_for_step(lj.make_comp_indices(plan, 1, seed=s), 0)) for s in (0, 1, 2)]
    assert step._cache_size() == 1
    assert np.abs(np.asarray(outs[0]) - np.asarray(outs[1])).max() > 1e-4
    eager = unet(
        x.transpose(0, 2, 3, 1),
        501,
        gpt2,
        t5,
        None,
        mask,
        comp_indices=lj.indices_for_step(lj.make_comp_indices(plan, 1, seed=2), 0),
    )
    np.testing.assert_allclose(np.asarray(outs[2]), np.asarray(eager), atol=1e-5)


def test_wrong_comp_indices_shape_is_a_clear_error(tiny_unet_dirs):
    unet = lj.load_unet(tiny_unet_dirs["base"], litefocus=lj.LiteFocusConfig())
    x, gpt2, t5, mask = make_inputs("base", time=20)
    with pytest.raises(ValueError, match=r"comp_indices\['1'\]"):
        jax_unet_out(unet, x, 501, gpt2, t5, mask, comp_indices={"1": jnp.zeros((3, 8), jnp.int32)})
