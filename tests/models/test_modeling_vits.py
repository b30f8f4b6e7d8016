"""The VITS text encoder (AudioLDM2 TTS's text_encoder_2) against transformers at fp32 (tiny random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_speech import TINY_VITS, build_tiny_vits

from litefocus_jax.models.modeling_vits import (
    VitsTextConfig,
    convert_vits_text_encoder_state,
    init_vits_text_encoder,
    load_vits_text_encoder,
    relative_index,
)
from litefocus_jax.weights.state import ConversionError, save_converted

REL_TOL = 1e-5  # max |error| / max |reference| at fp32; reached: ~3e-7


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch VitsModel, snapshot root holding text_encoder_2/, loaded JAX text encoder)."""
    ref = build_tiny_vits()
    root = tmp_path_factory.mktemp("vits")
    ref.save_pretrained(root / "text_encoder_2")
    return ref, root, load_vits_text_encoder(root)


def make_inputs(length, batch=3, seed=0):
    """Ids with padded rows as the pipeline makes them: row 0 has 3 tokens then padding whose ids are NOT the pad
    id (padded content must not leak), row 1 is full, row 2 has a single token."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, TINY_VITS["vocab_size"], (batch, length)).astype(np.int64)
    mask = np.ones((batch, length), np.int64)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return ids, mask


def torch_out(model, ids, mask):
    with torch.no_grad():
        m = torch.from_numpy(mask)
        out = model.text_encoder(torch.from_numpy(ids), attention_mask=m, padding_mask=m.unsqueeze(-1))
    return out.last_hidden_state.numpy(), out.prior_means.numpy(), out.prior_log_variances.numpy()


def rel_err(out, ref):
    return float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("length", [12, 3])  # longer than the window (tables padded) and shorter (tables sliced)
def test_matches_transformers_with_padding_masks(tiny, length):
    ref_model, _, model = tiny
    ids, mask = make_inputs(length)
    ref_h, ref_mean, ref_logvar = torch_out(ref_model, ids, mask)
    h = np.asarray(model(ids, mask))
    mean, logvar = (np.asarray(a) for a in model.prior(ids, mask))
    errs = rel_err(h, ref_h), rel_err(mean, ref_mean), rel_err(logvar, ref_logvar)
    print(f"L={length}: last_hidden_state / prior means / log variances max rel err {errs}")
    assert h.shape == ref_h.shape == (3, length, TINY_VITS["hidden_size"])
    assert max(errs) <= REL_TOL
    assert not np.any(h[mask == 0])  # padded rows are exactly zero, as in transformers
    other = ids.copy()
    other[mask == 0] = 1  # padded content does not reach the tokens
    np.testing.assert_allclose(np.asarray(model(other, mask)), h, rtol=0, atol=1e-6)


def test_key_mask_matters_and_none_means_all_tokens(tiny):
    ref_model, _, model = tiny
    ids, mask = make_inputs(12)
    ones = np.ones_like(mask)
    np.testing.assert_allclose(np.asarray(model(ids)), torch_out(ref_model, ids, ones)[0], rtol=0, atol=1e-5)
    assert not np.allclose(np.asarray(model(ids))[0, :3], np.asarray(model(ids, mask))[0, :3], atol=1e-3)


def test_relative_index_is_the_windowed_gather():
    rel = relative_index(5, 2)
    assert rel.shape == (5, 5, 5)
    for i in range(5):
        for j in range(5):
            want = np.eye(5)[j - i + 2] if abs(j - i) <= 2 else np.zeros(5)
            np.testing.assert_array_equal(rel[i, j], want)


def test_conversion_is_strict_and_ignores_the_waveform_parts(tiny, tmp_path):
    ref_model, _, model = tiny
    config = ref_model.config.to_dict()
    source = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    flat = convert_vits_text_encoder_state(source, config)
    assert not any(p[0] in ("flow", "decoder", "duration_predictor", "posterior_encoder") for p in flat)
    q = source["text_encoder.encoder.layers.0.attention.q_proj.weight"]
    np.testing.assert_array_equal(flat[("encoder", "layers", 0, "attention", "q_proj", "kernel")], q.T)
    conv = source["text_encoder.encoder.layers.1.feed_forward.conv_1.weight"]  # (out, in, k) -> (k, in, out)
    np.testing.assert_array_equal(flat[("encoder", "layers", 1, "feed_forward", "conv_1", "kernel")], conv.transpose(2, 1, 0))
    key = "text_encoder.encoder.layers.1.attention.emb_rel_v"
    with pytest.raises(ConversionError, match="emb_rel_v"):
        convert_vits_text_encoder_state({k: v for k, v in source.items() if k != key}, config)
    with pytest.raises(ConversionError, match="unexpected tensor 'text_encoder.encoder.layers.0.attention.x_proj.weight'"):
        convert_vits_text_encoder_state({**source, "text_encoder.encoder.layers.0.attention.x_proj.weight": q}, config)
    with pytest.raises(ConversionError, match="embed_tokens"):
        convert_vits_text_encoder_state({**source, "text_encoder.embed_tokens.weight": np.zeros((38, 16), np.float32)}, config)
    # the converted form holds the text encoder only and loads to the same outputs
    save_converted(tmp_path / "text_encoder_2", flat, config, component="text_encoder_2", source="test", dtype="float32")
    loaded = load_vits_text_encoder(tmp_path)
    ids, mask = make_inputs(7)
    np.testing.assert_array_equal(np.asarray(loaded(ids, mask)), np.asarray(model(ids, mask)))
    assert loaded.config == model.config == VitsTextConfig.from_hf(config)


@pytest.mark.parametrize(
    "config,match",
    [
        ({"model_type": "t5"}, "expected 'vits'"),
        ({"hidden_size": 10, "num_attention_heads": 3}, "divisible"),
        ({"hidden_act": "tanh"}, "hidden_act"),
        ({"window_size": 0}, "window_size"),
    ],
)
def test_bad_configs_raise(config, match):
    with pytest.raises(ValueError, match=match):
        init_vits_text_encoder(dict(TINY_VITS, **config))


def test_bad_inputs_raise(tiny):
    _, _, model = tiny
    with pytest.raises(ValueError, match=r"input_ids must be \(B, L\)"):
        model(np.zeros((3,), np.int32))
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(np.zeros((2, 4), np.int32), np.ones((2, 5), np.int32))
