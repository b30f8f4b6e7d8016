"""AudioLDM2ProjectionModel against diffusers at fp32 (tiny random weights saved with save_pretrained)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AudioLDM2ProjectionModel
from flax import nnx
from tiny_models import perturb

from litefocus_jax.models.projection_audioldm2 import (
    ProjectionConfig,
    convert_projection_model_state,
    init_projection_model,
    load_projection_model,
)
from litefocus_jax.weights.state import ConversionError, save_converted

REL_TOL = 1e-5  # max |error| / max |reference|; reached: ~1e-7
TINY = dict(text_encoder_dim=16, text_encoder_1_dim=24, langauge_model_dim=16)


def build_tiny_projection(seed=0, **extra) -> AudioLDM2ProjectionModel:
    torch.manual_seed(seed)
    model = AudioLDM2ProjectionModel(**TINY, **extra).eval()
    # SOS/EOS start as ones and the VITS positions as zeros: perturb so each one is checked
    perturb(model, 0.1)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch model, snapshot root holding projection_model/, loaded JAX model)."""
    ref = build_tiny_projection()
    root = tmp_path_factory.mktemp("projection")
    ref.save_pretrained(root / "projection_model")
    return ref, root, load_projection_model(root)


def make_inputs(batch=2, length=5, seed=0):
    """CLAP (B, 1, 16) with a ones mask, T5 (B, L, 24) whose row 0 is padded (as the negative branch)."""
    rng = np.random.default_rng(seed)
    clap = rng.standard_normal((batch, 1, 16)).astype(np.float32)
    t5 = rng.standard_normal((batch, length, 24)).astype(np.float32)
    mask = np.ones((batch, 1), np.int64)
    mask_1 = np.ones((batch, length), np.int64)
    mask_1[0, 1:] = 0
    return clap, t5, mask, mask_1


def torch_out(model, *arrays):
    with torch.no_grad():
        out = model(*(None if a is None else torch.from_numpy(a) for a in arrays))
    return out.hidden_states.numpy(), None if out.attention_mask is None else out.attention_mask.numpy()


def rel_err(out, ref):
    return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())


def test_matches_diffusers(tiny):
    ref_model, _, model = tiny
    clap, t5, mask, mask_1 = make_inputs()
    ref, ref_mask = torch_out(ref_model, clap, t5, mask, mask_1)
    out, out_mask = model(clap, t5, mask, mask_1)
    err = rel_err(out, ref)
    print(f"projection: max rel error {err:.1e}")
    assert out.shape == (2, 5 + 5, 16) and err <= REL_TOL
    np.testing.assert_array_equal(np.asarray(out_mask), ref_mask)
    assert np.asarray(out_mask)[0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 1]


def test_missing_masks_count_as_ones(tiny):
    ref_model, _, model = tiny
    clap, t5, mask, mask_1 = make_inputs()
    ref, ref_mask = torch_out(ref_model, clap, t5, np.ones_like(mask), np.ones_like(mask_1))
    for masks in ((None, None), (mask, None), (None, np.ones_like(mask_1))):
        out, out_mask = model(clap, t5, *masks)
        assert rel_err(out, ref) <= REL_TOL
        np.testing.assert_array_equal(np.asarray(out_mask), ref_mask)


def test_vits_learned_positions_match_diffusers(tmp_path):
    ref_model = build_tiny_projection(seed=1, use_learned_position_embedding=True, max_seq_length=7)
    ref_model.save_pretrained(tmp_path)
    model = load_projection_model(tmp_path)
    clap, t5, mask, mask_1 = make_inputs(length=7, seed=1)
    ref, _ = torch_out(ref_model, clap, t5, mask, mask_1)
    err = rel_err(model(clap, t5, mask, mask_1)[0], ref)
    print(f"projection (VITS positions): max rel error {err:.1e}")
    assert err <= REL_TOL
    with pytest.raises(ValueError, match="max_seq_length=7"):
        model(clap, t5[:, :5], mask, mask_1[:, :5])


def test_vits_checkpoint_without_positions_loads_zeros_as_diffusers(tmp_path):
    """anhnct/audioldm2_ljspeech's projection file may lack the positional embedding (AUDIOLDM2_TTS.md §1):
    diffusers then leaves it at its zero init; loading and conversion do the same, with a warning."""
    from safetensors.torch import load_file, save_file

    ref_model = build_tiny_projection(seed=2, use_learned_position_embedding=True, max_seq_length=7)
    ref_model.save_pretrained(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(file)
    del state["learnable_positional_embedding"]
    save_file(state, file)
    with pytest.warns(UserWarning, match="no 'learnable_positional_embedding'; using zeros"):
        model = load_projection_model(tmp_path)
    assert not np.any(np.asarray(model.learnable_positional_embedding[...]))
    with torch.no_grad():
        ref_model.learnable_positional_embedding.zero_()
    clap, t5, mask, mask_1 = make_inputs(length=7, seed=2)
    assert rel_err(model(clap, t5, mask, mask_1)[0], torch_out(ref_model, clap, t5, mask, mask_1)[0]) <= REL_TOL
    with pytest.warns(UserWarning):
        flat = convert_projection_model_state({k: v.numpy() for k, v in state.items()}, dict(ref_model.config))
    assert flat[("learnable_positional_embedding",)].shape == (1, 24, 7)


def test_embeddings_are_params_at_torch_names(tiny):
    ref_model, _, model = tiny
    params = jax.tree_util.tree_map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    for name in ("sos_embed", "eos_embed", "sos_embed_1", "eos_embed_1"):
        np.testing.assert_array_equal(params[name], getattr(ref_model, name).detach().numpy())
    np.testing.assert_array_equal(params["projection"]["kernel"], ref_model.projection.weight.detach().numpy().T)


def test_conversion_is_strict_and_init_has_same_structure(tiny):
    ref_model, _, model = tiny
    config = dict(ref_model.config)
    source = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    assert set(convert_projection_model_state(source, config)) == {
        ("projection", "kernel"),
        ("projection", "bias"),
        ("projection_1", "kernel"),
        ("projection_1", "bias"),
        ("sos_embed",),
        ("eos_embed",),
        ("sos_embed_1",),
        ("eos_embed_1",),
    }
    with pytest.raises(ConversionError, match="eos_embed_1"):
        convert_projection_model_state({k: v for k, v in source.items() if k != "eos_embed_1"}, config)
    with pytest.raises(ConversionError, match=r"\(8,\)"):
        convert_projection_model_state({**source, "sos_embed": np.zeros(8, np.float32)}, config)
    fresh = init_projection_model(config, seed=2)
    clap, t5, mask, mask_1 = make_inputs()
    assert fresh(clap, t5, mask, mask_1)[0].shape == model(clap, t5, mask, mask_1)[0].shape


def test_converted_round_trip(tiny, tmp_path):
    ref_model, _, model = tiny
    config = dict(ref_model.config)
    flat = convert_projection_model_state({k: v.numpy() for k, v in ref_model.state_dict().items()}, config)
    save_converted(tmp_path / "projection_model", flat, config, component="projection_model", source="test", dtype="float32")
    clap, t5, mask, mask_1 = make_inputs()
    out = load_projection_model(tmp_path)(clap, t5, mask, mask_1)[0]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(model(clap, t5, mask, mask_1)[0]))


def test_bf16(tiny):
    _, root, model = tiny
    clap, t5, mask, mask_1 = make_inputs()
    out = load_projection_model(root, dtype=jnp.bfloat16)(clap, t5, mask, mask_1)[0]
    assert out.dtype == jnp.bfloat16
    assert rel_err(np.asarray(out, np.float32), np.asarray(model(clap, t5, mask, mask_1)[0])) < 2e-2


@pytest.mark.parametrize(
    "config,match",
    [
        ({"_class_name": "AudioLDM2UNet2DConditionModel", **TINY}, "_class_name"),
        ({"text_encoder_dim": 16, "text_encoder_1_dim": 24, "language_model_dim": 16}, "langauge_model_dim"),
        ({"text_encoder_dim": 16, "langauge_model_dim": 16}, "text_encoder_1_dim"),
        ({**TINY, "use_learned_position_embedding": True}, "max_seq_length"),
    ],
)
def test_bad_configs_raise(config, match):
    with pytest.raises(ValueError, match=match):
        ProjectionConfig.from_diffusers(config)


def test_bad_inputs_raise(tiny):
    _, _, model = tiny
    clap, t5, mask, mask_1 = make_inputs()
    with pytest.raises(ValueError, match="CLAP"):
        model(clap[..., :8], t5, mask, mask_1)
    with pytest.raises(ValueError, match="T5"):
        model(clap, t5[..., :16], mask, mask_1)
    with pytest.raises(ValueError, match="attention_mask_1"):
        model(clap, t5, mask, mask_1[:, :3])
