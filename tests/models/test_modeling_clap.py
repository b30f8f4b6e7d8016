"""CLAP text branch parity against transformers `ClapModel.get_text_features` (tiny random model, AUDIOLDM2.md §4.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tiny_models import perturb
from transformers import (
    ClapAudioConfig,
    ClapConfig,
    ClapModel,
    ClapTextConfig,
    T5Config,
    T5EncoderModel,
)

from litefocus_jax.models.modeling_clap import (
    ClapTextConfig as JaxClapTextConfig,
)
from litefocus_jax.models.modeling_clap import (
    convert_clap_text_state,
    init_clap_text,
    load_clap_text,
)
from litefocus_jax.weights.state import (
    ConversionError,
    abstract_params,
    read_safetensors,
)

REL_TOL = 1e-5  # max |jax - torch| / max |torch| at fp32; reached ~1e-7 (see printed values)
VOCAB = 261  # the tiny byte-level Roberta tokenizer of AUDIOLDM2.md §4.2: 4 specials + 256 bytes + <mask>
PAD = 1

# cvssp/audioldm2 text_encoder/config.json (AUDIOLDM2.md §7), audio_config omitted (not used by the text path).
CVSSP_CONFIG = {
    "architectures": ["ClapModel"],
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "logit_scale_init_value": 14.285714285714285,
    "model_type": "clap",
    "num_hidden_layers": 16,
    "projection_dim": 512,
    "projection_hidden_act": "relu",
    "torch_dtype": "float64",
    "text_config": {
        "classifier_dropout": None,
        "fusion_hidden_size": 768,
        "fusion_num_hidden_layers": 2,
        "initializer_range": 0.02,
        "model_type": "clap_text_model",
        "projection_hidden_size": 768,
    },
}


def build_tiny_clap(seed: int = 0) -> ClapModel:
    text_cfg = ClapTextConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=37,
        num_attention_heads=2,
        num_hidden_layers=2,
        projection_dim=16,
        bos_token_id=0,
        pad_token_id=PAD,
        eos_token_id=2,
        max_position_embeddings=64,
    )
    audio_cfg = ClapAudioConfig(
        spec_size=64,
        window_size=4,
        num_mel_bins=64,
        intermediate_size=37,
        depths=[2, 2],
        num_attention_heads=[2, 2],
        num_hidden_layers=2,
        hidden_size=192,
        projection_dim=16,
        patch_size=2,
        patch_stride=2,
        patch_embed_input_channels=4,
    )
    torch.manual_seed(seed)
    model = ClapModel(ClapConfig(text_config=text_cfg.to_dict(), audio_config=audio_cfg.to_dict(), projection_dim=16))
    model.eval()  # constructed models are in train mode (dropout)
    # Default init leaves LayerNorms at 1/0 and biases at 0: perturb so every parameter matters.
    perturb(model, 0.1)
    return model.double()  # the cvssp checkpoint is stored in float64 too


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch float64 ClapModel, snapshot root with text_encoder/ saved by save_pretrained)."""
    root = tmp_path_factory.mktemp("clap")
    model = build_tiny_clap()
    model.save_pretrained(root / "text_encoder")
    return model, root


def make_inputs():
    """Batch of 3: right-padded short prompt, full-length prompt, left-padded prompt; masks have zeros."""
    ids = np.full((3, 12), PAD, np.int64)
    ids[0, :5] = [0, 40, 77, 100, 2]
    ids[1] = [0, 5, 9, 100, 33, 250, 8, 60, 61, 62, 17, 2]
    ids[2, 4:] = [0, 70, 71, 72, 73, 74, 75, 2]
    return ids, (ids != PAD).astype(np.int64)


def torch_features(model, ids, mask):
    with torch.no_grad():
        out = model.get_text_features(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    # transformers v5 returns BaseModelOutputWithPooling; the pipeline takes .pooler_output.
    return out.pooler_output.double().numpy()


def test_matches_transformers_fp32(tiny):
    model, root = tiny
    clap = load_clap_text(root)  # snapshot root -> text_encoder/; float64 checkpoint -> float32
    assert clap.text_model.pooler.dense.kernel.dtype == jnp.float32
    ids, mask = make_inputs()
    out = np.asarray(clap(ids, mask), np.float64)
    for name, ref_model in (("float64", model), ("float32", build_tiny_clap().float().eval())):
        ref = torch_features(ref_model, ids, mask)
        err = np.abs(out - ref).max()
        rel = err / np.abs(ref).max()
        print(f"CLAP vs torch {name}: max abs error {err:.2e}, relative {rel:.2e} (output max {np.abs(ref).max():.3f})")
        assert out.shape == (3, 16)
        assert rel <= REL_TOL
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-6)


def test_padding_mask_is_live(tiny):
    """Masked pads change the result (so the parity above covers the mask), unmasked rows do not care."""
    clap = load_clap_text(tiny[1] / "text_encoder")
    ids, mask = make_inputs()
    masked = np.asarray(clap(ids, mask))
    unmasked = np.asarray(clap(ids, np.ones_like(mask)))
    assert np.abs(masked - unmasked)[0].max() > 1e-3
    np.testing.assert_allclose(masked[1], unmasked[1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(clap(ids[1:2])), masked[1:2], atol=1e-6)  # mask None = all ones


def test_functional_form_under_jit_matches_module(tiny):
    clap = load_clap_text(tiny[1])
    apply, params = clap.functional()
    ids, mask = make_inputs()
    jitted = jax.jit(apply)(params, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(clap(ids, mask)), atol=1e-6)


def test_bf16_runs_close_to_fp32(tiny):
    ids, mask = make_inputs()
    ref = np.asarray(load_clap_text(tiny[1])(ids, mask))
    out = load_clap_text(tiny[1], dtype=jnp.bfloat16)(ids, mask)
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    print(f"CLAP bf16 vs fp32: relative L2 error {rel:.2e}")
    assert rel < 5e-2


def test_missing_and_unexpected_tensors_raise(tiny):
    folder = tiny[1] / "text_encoder"
    source, _ = read_safetensors(folder / "model.safetensors")
    config = tiny[0].config.to_dict()
    flat = convert_clap_text_state(source, config)  # the audio branch, logit scales and buffers are ignored
    assert ("text_projection", "linear2", "kernel") in flat

    missing = {k: v for k, v in source.items() if k != "text_model.encoder.layer.1.attention.self.key.weight"}
    with pytest.raises(ConversionError, match=r"text_model\.encoder\.layer\.1\.attention\.self\.key\.kernel"):
        convert_clap_text_state(missing, config)
    extra = dict(source, **{"text_model.encoder.layer.2.output.dense.weight": np.zeros((16, 37), np.float32)})
    with pytest.raises(ConversionError, match=r"unexpected tensor 'text_model\.encoder\.layer\.2"):
        convert_clap_text_state(extra, config)
    bad = dict(source, **{"text_projection.linear1.weight": np.zeros((8, 16), np.float32)})
    with pytest.raises(ConversionError, match=r"text_projection\.linear1\.weight.*\(8, 16\)"):
        convert_clap_text_state(bad, config)


def test_other_models_config_raises_clear_error(tmp_path):
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=32, d_model=8, d_ff=8, d_kv=4, num_heads=2, num_layers=1))
    t5.save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match="model_type is 't5', expected 'clap'.*load_t5_encoder"):
        load_clap_text(tmp_path / "t5")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(text_config=dict(hidden_act="mish")), "hidden_act='mish'"),
        (dict(text_config=dict(hidden_size=15)), "not divisible"),
        (dict(text_config=dict(position_embedding_type="relative_key")), "position_embedding_type"),
        (dict(model_type="clap_text_model"), "expected 'clap'"),
    ],
)
def test_bad_config_raises(change, match):
    config = dict(CVSSP_CONFIG, **change)
    if "text_config" in change:
        config["text_config"] = dict(CVSSP_CONFIG["text_config"], **change["text_config"])
    with pytest.raises(ValueError, match=match):
        JaxClapTextConfig.from_hf(config)


def test_bad_inputs_raise(tiny):
    clap = load_clap_text(tiny[1])
    ids, mask = make_inputs()
    with pytest.raises(ValueError, match="token ids must lie in"):
        clap(np.full((1, 4), VOCAB), None)
    with pytest.raises(ValueError, match="attention_mask"):
        clap(ids, mask[:, :5])
    with pytest.raises(ValueError, match="exceed the model's maximum of 62"):
        clap(np.zeros((1, 63), np.int64), None)


def test_cvssp_config_defaults_and_size():
    """The real text_encoder config resolves to transformers' defaults; the text branch has 125.3M parameters."""
    cfg = JaxClapTextConfig.from_hf(CVSSP_CONFIG)
    assert cfg == JaxClapTextConfig()
    assert (cfg.vocab_size, cfg.layer_norm_eps, cfg.max_tokens, cfg.projection_dim) == (50265, 1e-12, 512, 512)
    from litefocus_jax.models.modeling_clap import _builder

    _, targets = abstract_params(_builder(cfg, jnp.float32))
    n = sum(int(np.prod(s.shape)) for s in targets.values())
    assert round(n / 1e6, 1) == 125.3, n


def test_init_has_the_loaded_structure(tiny):
    loaded = jax.tree_util.tree_map(jnp.shape, load_clap_text(tiny[1]).functional()[1])
    fresh = jax.tree_util.tree_map(jnp.shape, init_clap_text(tiny[0].config.to_dict(), seed=3).functional()[1])
    assert loaded == fresh


def test_converted_folder_round_trip(tiny, tmp_path):
    """convert -> save_converted (litefocus_jax format, bf16) -> load gives the same module as loading torch weights."""
    from litefocus_jax.weights.state import save_converted

    model, root = tiny
    source, _ = read_safetensors(root / "text_encoder" / "model.safetensors")
    config = model.config.to_dict()
    save_converted(
        tmp_path / "text_encoder",
        convert_clap_text_state(source, config),
        config,
        component="text_encoder",
        source=str(root),
        dtype="bfloat16",
    )
    ids, mask = make_inputs()
    ref = load_clap_text(root, dtype=jnp.bfloat16)(ids, mask)
    out = load_clap_text(tmp_path, dtype=jnp.bfloat16)(ids, mask)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))
