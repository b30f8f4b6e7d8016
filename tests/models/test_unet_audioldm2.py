"""AudioLDM2 UNet parity against diffusers at fp32 (tiny random-weight models saved with save_pretrained)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tiny_models import build_tiny_unet, jax_unet_out, make_inputs, torch_unet_out

import litefocus_jax as lj

TOL = 1e-4  # max abs error at fp32; reached: ~2-3e-6 on outputs of magnitude ~2


@pytest.mark.parametrize(
    "name,time,timestep",
    [("base", 13, 501), ("base", 16, 1), ("large", 13, 999), ("tts", 10, 250)],
)
def test_unet_matches_diffusers(tiny_unet_dirs, name, time, timestep):
    ref_unet = build_tiny_unet(name)
    unet = lj.load_unet(tiny_unet_dirs[name])
    x, gpt2, t5, mask = make_inputs(name, time=time)
    ref = torch_unet_out(ref_unet, x, timestep, gpt2, t5, mask)
    out = jax_unet_out(unet, x, timestep, gpt2, t5, mask)
    err = np.abs(out - ref).max()
    print(f"{name} T={time}: max abs error {err:.2e} (output max {np.abs(ref).max():.2f})")
    assert out.shape == ref.shape
    assert err <= TOL


def test_t5_mask_zeros_matter(tiny_unet_dirs):
    """The mask path is live: masking T5 tokens changes the output (so the parity above covers it)."""
    unet = lj.load_unet(tiny_unet_dirs["base"])
    x, gpt2, t5, mask = make_inputs("base")
    full = jax_unet_out(unet, x, 501, gpt2, t5, np.ones_like(mask))
    masked = jax_unet_out(unet, x, 501, gpt2, t5, mask)
    assert np.abs(full - masked)[0].max() > 1e-3
    np.testing.assert_allclose(full[1], masked[1], atol=1e-6)


def test_functional_form_under_jit_matches_module(tiny_unet_dirs):
    unet = lj.load_unet(tiny_unet_dirs["base"])
    apply, params = unet.functional()
    x, gpt2, t5, mask = make_inputs("base", time=16)
    xl = x.transpose(0, 2, 3, 1)
    eager = unet(xl, 501, gpt2, t5, None, mask)
    jitted = jax.jit(apply)(params, xl, jnp.asarray(501), gpt2, t5, None, mask)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5)
    assert all(isinstance(v, jax.Array) for v in jax.tree_util.tree_leaves(params))


def test_bf16_runs_close_to_fp32(tiny_unet_dirs):
    x, gpt2, t5, mask = make_inputs("base", time=16)
    ref = jax_unet_out(lj.load_unet(tiny_unet_dirs["base"]), x, 501, gpt2, t5, mask)
    unet16 = lj.load_unet(tiny_unet_dirs["base"], dtype=jnp.bfloat16)
    out = unet16(x.transpose(0, 2, 3, 1), 501, gpt2, t5, None, mask)
    assert out.dtype == jnp.bfloat16
    rel = np.linalg.norm(np.asarray(out, np.float32).transpose(0, 3, 1, 2) - ref) / np.linalg.norm(ref)
    assert rel < 5e-2, rel


def test_init_unet_has_the_loaded_structure(tiny_unet_dirs):
    from tiny_models import TINY_UNET_CONFIGS

    loaded = jax.tree_util.tree_map(jnp.shape, lj.load_unet(tiny_unet_dirs["large"]).functional()[1])
    fresh = jax.tree_util.tree_map(jnp.shape, lj.init_unet(TINY_UNET_CONFIGS["large"], seed=3).functional()[1])
    assert loaded == fresh


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(sample=np.zeros((1, 8, 16, 16))), "channels-last"),
        (dict(gpt2=np.zeros((1, 8, 7))), "width 7"),
        (dict(t5=np.zeros((1, 5, 16))), "width 16"),
        (dict(mask=np.ones((1, 4))), "encoder_attention_mask_1"),
        (dict(gpt2=None), "required"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_unet_dirs, bad, match):
    unet = lj.load_unet(tiny_unet_dirs["base"])
    args = dict(sample=np.zeros((1, 16, 16, 8)), gpt2=np.zeros((1, 8, 16)), t5=np.zeros((1, 5, 24)), mask=np.ones((1, 5)))
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        unet(args["sample"], 1, args["gpt2"], args["t5"], None, args["mask"])


def test_torch_nearest_indices_match_torch():
    from litefocus_jax.models.resnet import torch_nearest_indices

    for n_in, n_out in [(63, 125), (32, 63), (7, 13), (5, 10), (250, 500), (13, 25)]:
        src = torch.arange(n_in, dtype=torch.float32)[None, None, :, None]
        ref = torch.nn.functional.interpolate(src, size=(n_out, 1), mode="nearest")[0, 0, :, 0].long().numpy()
        np.testing.assert_array_equal(torch_nearest_indices(n_in, n_out), ref)


@pytest.mark.parametrize(
    "change,match",
    [
        (
            dict(down_block_types=["DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]),
            "AttnDownBlock2D",
        ),
        (dict(_class_name="UNet2DConditionModel"), "not an AudioLDM2 UNet"),
        (dict(only_cross_attention=True), "only_cross_attention"),
        (dict(block_out_channels=[16, 32, 48]), "equal length"),
    ],
)
def test_bad_config_raises(change, match):
    from tiny_models import TINY_UNET_CONFIGS

    with pytest.raises(ValueError, match=match):
        lj.UNetConfig.from_diffusers(dict(TINY_UNET_CONFIGS["base"], **change))
