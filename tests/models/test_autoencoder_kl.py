"""AutoencoderKL (VAE) parity against diffusers at fp32 (tiny random-weight model saved with save_pretrained)."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.numpy import save_file
from tiny_models import TINY_VAE_CONFIG, build_tiny_vae

from litefocus_jax.models.autoencoder_kl import (
    VAEConfig,
    convert_vae_state,
    init_vae,
    load_vae,
)
from litefocus_jax.weights.state import ConversionError

# AUDIOLDM2.md §4.1 at tiny widths; the scaling factor of cvssp/audioldm2.
REL_TOL = 1e-5  # max |err| / max |ref| at fp32; reached: ~2e-6 (decode), ~1.3e-6 (encode)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    """(torch reference, snapshot root whose vae/ subfolder holds the saved model)."""
    root = tmp_path_factory.mktemp("vae_snapshot")
    ref = build_tiny_vae()
    ref.save_pretrained(root / "vae")
    return ref, root


@pytest.fixture(scope="module")
def vae(tiny_vae):
    return load_vae(tiny_vae[1])  # snapshot root: resolve_component finds vae/


def state_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def rel_err(out, ref) -> float:
    return float(np.abs(np.asarray(out, np.float32) - ref).max() / np.abs(ref).max())


def test_decode_matches_diffusers(tiny_vae, vae):
    ref_vae, _ = tiny_vae
    z = np.random.default_rng(0).standard_normal((2, 8, 13, 16)).astype(np.float32)  # odd latent T
    with torch.no_grad():
        ref = ref_vae.decode(torch.from_numpy(z)).sample.numpy()
    out = np.asarray(vae.decode(z.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    err = rel_err(out, ref)
    print(f"decode T=13: relative max error {err:.2e} (output max {np.abs(ref).max():.2f})")
    assert out.shape == ref.shape == (2, 1, 52, 64)
    assert err <= REL_TOL
    assert vae.config.scaling_factor == TINY_VAE_CONFIG["scaling_factor"]
    assert vae.config.scale_factor == 4


@pytest.mark.parametrize("frames", [52, 51])
def test_encode_matches_diffusers(tiny_vae, vae, frames):
    ref_vae, _ = tiny_vae
    x = np.random.default_rng(1).standard_normal((2, 1, frames, 64)).astype(np.float32)
    with torch.no_grad():
        dist = ref_vae.encode(torch.from_numpy(x)).latent_dist
    post = vae.encode(x.transpose(0, 2, 3, 1))
    mean, logvar = post  # unpacks as a tuple
    for name, out, ref in (("mean", mean, dist.mean.numpy()), ("logvar", logvar, dist.logvar.numpy())):
        out = np.asarray(out).transpose(0, 3, 1, 2)
        err = rel_err(out, ref)
        print(f"encode T={frames} {name}: relative max error {err:.2e} (max {np.abs(ref).max():.2f})")
        assert out.shape == ref.shape == (2, 8, frames // 4, 16)
        assert err <= REL_TOL
    np.testing.assert_array_equal(np.asarray(post.mode()), np.asarray(mean))
    sample = post.sample(jax.random.key(0))
    assert sample.shape == mean.shape and not np.allclose(np.asarray(sample), np.asarray(mean))


def test_decoder_only_under_jit_matches_full(tiny_vae, vae):
    z = np.random.default_rng(3).standard_normal((1, 5, 16, 8)).astype(np.float32)
    dec = load_vae(
        tiny_vae[1] / "vae",
        with_encoder=False,
        attention_chunk=16,  # 80 tokens -> 5 blocks
        attention_implementation="chunked",
    )
    assert dec.encoder is None and dec.quant_conv is None
    apply, params = dec.functional("decode")
    out = jax.jit(apply)(params, z)
    np.testing.assert_allclose(np.asarray(out), np.asarray(vae.decode(z)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="with_encoder=True"):
        dec.encode(np.zeros((1, 20, 64, 1), np.float32))


def test_bf16_runs_close_to_fp32(tiny_vae, vae):
    z = np.random.default_rng(4).standard_normal((1, 6, 16, 8)).astype(np.float32)
    vae16 = load_vae(tiny_vae[1], dtype=jnp.bfloat16, with_encoder=False)
    out = vae16.decode(z)
    assert out.dtype == jnp.bfloat16
    ref = np.asarray(vae.decode(z))
    rel = np.linalg.norm(np.asarray(out, np.float32) - ref) / np.linalg.norm(ref)
    print(f"bf16 decode: relative L2 error {rel:.2e}")
    assert rel < 5e-2, rel


def test_old_attention_names_convert_identically(tiny_vae):
    ref_vae, _ = tiny_vae
    state = state_numpy(ref_vae)
    old = {}
    for key, value in state.items():
        for new, legacy in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        old[key] = value
    assert any(".proj_attn." in k for k in old)
    want = convert_vae_state(state, TINY_VAE_CONFIG)
    got = convert_vae_state(old, TINY_VAE_CONFIG)
    assert want.keys() == got.keys()
    for path in want:
        np.testing.assert_array_equal(got[path], want[path])


@pytest.mark.parametrize("flags", [dict(mid_block_add_attention=False), dict(use_quant_conv=False, use_post_quant_conv=False)])
def test_optional_parts_follow_the_config(flags):
    torch.manual_seed(0)
    ref = AutoencoderKL(**TINY_VAE_CONFIG, **flags)
    flat = convert_vae_state(state_numpy(ref), dict(TINY_VAE_CONFIG, **flags))  # strict: structures agree
    assert len(flat) == len(ref.state_dict())


def test_init_vae_has_the_loaded_structure(vae):
    fresh = init_vae(TINY_VAE_CONFIG, seed=3)
    shapes = lambda m: jax.tree_util.tree_map(jnp.shape, m.functional()[1])  # noqa: E731
    assert shapes(fresh) == shapes(vae)


def test_strict_loading_names_missing_and_extra_tensors(tiny_vae, tmp_path):
    ref_vae, root = tiny_vae
    state = state_numpy(ref_vae)
    missing = dict(state)
    del missing["decoder.mid_block.attentions.0.to_k.bias"]
    with pytest.raises(ConversionError, match=r"decoder\.mid_block\.attentions\.0\.to_k\.bias"):
        convert_vae_state(missing, TINY_VAE_CONFIG)
    with pytest.raises(ConversionError, match=r"to_k\.weight.*\(32, 16\)"):
        convert_vae_state(
            dict(state, **{"decoder.mid_block.attentions.0.to_k.weight": np.zeros((32, 16), np.float32)}), TINY_VAE_CONFIG
        )
    # An extra tensor in a component folder is named by load_vae too.
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(root / "vae" / "config.json", folder / "config.json")
    save_file(
        dict(state, **{"decoder.extra_layer.weight": np.zeros(3, np.float32)}),
        str(folder / "diffusion_pytorch_model.safetensors"),
    )
    with pytest.raises(ConversionError, match=r"decoder\.extra_layer\.weight"):
        load_vae(folder)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(_class_name="AudioLDM2UNet2DConditionModel"), "not an AutoencoderKL"),
        (dict(down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D")), "AttnDownEncoderBlock2D"),
        (dict(up_block_types=("UpDecoderBlock2D",) * 2), "up_block_types has 2 entries"),
        (dict(act_fn="gelu"), "act_fn"),
        (dict(norm_num_groups=6), "not divisible by norm_num_groups"),
    ],
)
def test_bad_config_raises(change, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig.from_diffusers(dict(TINY_VAE_CONFIG, **change))


def test_other_models_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AudioLDM2UNet2DConditionModel", "in_channels": 8}))
    with pytest.raises(ValueError, match="not an AutoencoderKL"):
        load_vae(tmp_path)


def test_bad_inputs_raise_clear_errors(vae):
    with pytest.raises(ValueError, match="channels-last"):
        vae.decode(np.zeros((1, 8, 5, 16), np.float32))  # torch layout
    with pytest.raises(ValueError, match="channels-last"):
        vae.encode(np.zeros((1, 1, 20, 64), np.float32))
