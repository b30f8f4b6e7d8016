"""T5 encoder parity against transformers `T5EncoderModel` (tiny random model, AUDIOLDM2.md §4.1)."""

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
from transformers.models.t5.modeling_t5 import T5Attention as TorchT5Attention

from litefocus_jax.models.modeling_t5 import (
    T5EncoderConfig,
    convert_t5_encoder_state,
    init_t5_encoder,
    load_t5_encoder,
    relative_position_buckets,
)
from litefocus_jax.weights.state import (
    ConversionError,
    abstract_params,
    read_safetensors,
)

REL_TOL = 1e-5  # max |jax - torch| / max |torch| at fp32; reached ~5e-7 (see printed values)
VOCAB = 156  # the tiny Unigram T5 tokenizer of AUDIOLDM2.md §4.2: 4 + 52 letters + 100 sentinels

# cvssp/audioldm2 text_encoder_2/config.json (AUDIOLDM2.md §7).
CVSSP_CONFIG = {
    "architectures": ["T5EncoderModel"],
    "classifier_dropout": 0.0,
    "d_ff": 2816,
    "d_kv": 64,
    "d_model": 1024,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "n_positions": 512,
    "num_decoder_layers": 24,
    "num_heads": 16,
    "num_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": True,
    "vocab_size": 32128,
}


def build_tiny_t5(feed_forward_proj: str = "gated-gelu", seed: int = 0) -> T5EncoderModel:
    torch.manual_seed(seed)
    model = T5EncoderModel(
        T5Config(vocab_size=VOCAB, d_model=24, d_ff=37, d_kv=8, num_heads=3, num_layers=2, feed_forward_proj=feed_forward_proj)
    ).eval()
    # Default init leaves the RMSNorm scales at 1: perturb every parameter.
    perturb(model, 0.1)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{ffn kind: (torch model, snapshot root with text_encoder_2/)}."""
    out = {}
    for proj in ("gated-gelu", "relu"):
        root = tmp_path_factory.mktemp(proj)
        model = build_tiny_t5(proj)
        model.save_pretrained(root / "text_encoder_2")
        out[proj] = (model, root)
    return out


def make_inputs(length: int = 20):
    """Batch of 2 of different lengths (T5 pads with 0 after `</s>`=1); 20 tokens reach the log-spaced buckets."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, VOCAB, size=(2, length))
    ids[0, 6] = 1
    ids[0, 7:] = 0
    ids[1, -1] = 1
    return ids, (ids != 0).astype(np.int64)


def torch_states(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()


@pytest.mark.parametrize("proj", ["gated-gelu", "relu"])
def test_matches_transformers_fp32(tiny, proj):
    model, root = tiny[proj]
    t5 = load_t5_encoder(root)  # snapshot root -> text_encoder_2/
    ids, mask = make_inputs()
    ref = torch_states(model, ids, mask)
    out = np.asarray(t5(ids, mask))
    err = np.abs(out - ref).max()
    rel = err / np.abs(ref).max()
    print(f"T5 ({proj}) vs torch: max abs error {err:.2e}, relative {rel:.2e} (output max {np.abs(ref).max():.2f})")
    assert out.shape == ref.shape == (2, 20, 24)
    assert rel <= REL_TOL


def test_padding_mask_is_live(tiny):
    t5 = load_t5_encoder(tiny["gated-gelu"][1] / "text_encoder_2")
    ids, mask = make_inputs()
    masked = np.asarray(t5(ids, mask))
    unmasked = np.asarray(t5(ids, np.ones_like(mask)))
    assert np.abs(masked - unmasked)[0, :7].max() > 1e-3
    np.testing.assert_allclose(masked[1], unmasked[1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(t5(ids[1:])), masked[1:], atol=1e-5)  # mask None = all ones


@pytest.mark.parametrize("buckets,distance", [(32, 128), (32, 64), (16, 20), (8, 16)])
def test_relative_position_buckets_match_transformers(buckets, distance):
    n = 300
    ref = TorchT5Attention._relative_position_bucket(
        torch.arange(n)[None, :] - torch.arange(n)[:, None], bidirectional=True, num_buckets=buckets, max_distance=distance
    ).numpy()
    np.testing.assert_array_equal(relative_position_buckets(n, n, buckets, distance), ref)


def test_functional_form_under_jit_matches_module(tiny):
    t5 = load_t5_encoder(tiny["gated-gelu"][1])
    apply, params = t5.functional()
    ids, mask = make_inputs()
    jitted = jax.jit(apply)(params, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(t5(ids, mask)), atol=1e-5)


def test_bf16_runs_close_to_fp32(tiny):
    root = tiny["gated-gelu"][1]
    ids, mask = make_inputs()
    ref = np.asarray(load_t5_encoder(root)(ids, mask))
    out = load_t5_encoder(root, dtype=jnp.bfloat16)(ids, mask)
    assert out.dtype == jnp.bfloat16
    out = np.asarray(out, np.float32)
    assert np.isfinite(out).all()
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    print(f"T5 bf16 vs fp32: relative L2 error {rel:.2e}")
    assert rel < 5e-2
    with pytest.raises(ValueError, match="float16"):
        load_t5_encoder(root, dtype=jnp.float16)


def test_tied_embedding_in_either_or_both_names(tiny):
    model, root = tiny["gated-gelu"]
    source, _ = read_safetensors(root / "text_encoder_2" / "model.safetensors")
    config = model.config.to_dict()
    assert "encoder.embed_tokens.weight" not in source  # safetensors keeps only shared.weight
    ref = convert_t5_encoder_state(source, config)[("shared", "embedding")]
    only_tied = {("encoder.embed_tokens.weight" if k == "shared.weight" else k): v for k, v in source.items()}
    both = dict(source, **{"encoder.embed_tokens.weight": source["shared.weight"].copy()})
    for variant in (only_tied, both):
        np.testing.assert_array_equal(convert_t5_encoder_state(variant, config)[("shared", "embedding")], ref)
    differ = dict(source, **{"encoder.embed_tokens.weight": source["shared.weight"] + 1})
    with pytest.raises(ConversionError, match="differs from 'shared.weight'"):
        convert_t5_encoder_state(differ, config)
    # A full T5ForConditionalGeneration checkpoint: the decoder and lm_head are ignored, as transformers does.
    full = dict(
        source,
        **{
            "decoder.block.0.layer.0.SelfAttention.q.weight": np.zeros((24, 24), np.float32),
            "lm_head.weight": np.zeros((VOCAB, 24), np.float32),
        },
    )
    assert convert_t5_encoder_state(full, config).keys() == convert_t5_encoder_state(source, config).keys()


def test_missing_and_unexpected_tensors_raise(tiny):
    model, root = tiny["gated-gelu"]
    source, _ = read_safetensors(root / "text_encoder_2" / "model.safetensors")
    config = model.config.to_dict()
    missing = {k: v for k, v in source.items() if k != "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"}
    with pytest.raises(ConversionError, match=r"encoder\.block\.1\.layer\.1\.DenseReluDense\.wi_1\.kernel"):
        convert_t5_encoder_state(missing, config)
    no_bias = {k: v for k, v in source.items() if "relative_attention_bias" not in k}
    with pytest.raises(ConversionError, match="relative_attention_bias"):
        convert_t5_encoder_state(no_bias, config)
    key = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
    extra = dict(source, **{key: np.zeros((32, 3), np.float32)})
    with pytest.raises(ConversionError, match=r"unexpected tensor 'encoder\.block\.1\.layer\.0\.SelfAttention\.relative"):
        convert_t5_encoder_state(extra, config)
    # A gated checkpoint against a relu config: wi_0/wi_1 unexpected, wi missing.
    with pytest.raises(ConversionError, match=r"DenseReluDense\.wi\.kernel"):
        convert_t5_encoder_state(source, dict(config, feed_forward_proj="relu", dense_act_fn="relu", is_gated_act=False))


def test_other_models_config_raises_clear_error(tmp_path):
    text = ClapTextConfig(
        vocab_size=32,
        hidden_size=8,
        intermediate_size=8,
        num_attention_heads=2,
        num_hidden_layers=1,
        projection_dim=8,
        max_position_embeddings=16,
    )
    audio = ClapAudioConfig(
        spec_size=64,
        window_size=4,
        num_mel_bins=64,
        depths=[2, 2],
        num_attention_heads=[2, 2],
        num_hidden_layers=2,
        hidden_size=192,
        projection_dim=8,
        patch_size=2,
        patch_stride=2,
        patch_embed_input_channels=4,
    )
    torch.manual_seed(0)
    clap = ClapModel(ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=8))
    clap.save_pretrained(tmp_path / "clap")
    with pytest.raises(ValueError, match="model_type is 'clap', expected 't5'.*load_clap_text"):
        load_t5_encoder(tmp_path / "clap")


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(feed_forward_proj="gated-gelu-x", dense_act_fn=None), "feed_forward_proj"),
        (dict(dense_act_fn="mish"), "'mish'"),
        (dict(is_decoder=True), "decoder"),
        (dict(model_type="mt5"), "expected 't5'"),
    ],
)
def test_bad_config_raises(change, match):
    config = dict(CVSSP_CONFIG, **change)
    if config.get("dense_act_fn") is None:
        config.pop("dense_act_fn")
    with pytest.raises(ValueError, match=match):
        T5EncoderConfig.from_hf(config)


def test_cvssp_config_and_size():
    """Flan-T5-large encoder: gated gelu_new, 341.2M parameters (shared embedding included)."""
    cfg = T5EncoderConfig.from_hf(CVSSP_CONFIG)
    assert (cfg.dense_act_fn, cfg.is_gated_act, cfg.num_layers, cfg.layer_norm_epsilon) == ("gelu_new", True, 24, 1e-6)
    from litefocus_jax.models.modeling_t5 import _builder

    _, targets = abstract_params(_builder(cfg, jnp.float32))
    n = sum(int(np.prod(s.shape)) for s in targets.values())
    assert round(n / 1e6, 1) == 341.2, n
    # Derived from feed_forward_proj when dense_act_fn / is_gated_act are absent (older configs).
    bare = {k: v for k, v in CVSSP_CONFIG.items() if k not in ("dense_act_fn", "is_gated_act")}
    assert T5EncoderConfig.from_hf(bare) == cfg
    relu = T5EncoderConfig.from_hf({"model_type": "t5"})
    assert (relu.dense_act_fn, relu.is_gated_act) == ("relu", False)


def test_init_has_the_loaded_structure(tiny):
    model, root = tiny["gated-gelu"]
    loaded = jax.tree_util.tree_map(jnp.shape, load_t5_encoder(root).functional()[1])
    fresh = jax.tree_util.tree_map(jnp.shape, init_t5_encoder(model.config.to_dict(), seed=3).functional()[1])
    assert loaded == fresh


def test_converted_folder_round_trip(tiny, tmp_path):
    """convert -> save_converted (litefocus_jax format) -> load gives the same module as loading torch weights."""
    from litefocus_jax.weights.state import save_converted

    model, root = tiny["gated-gelu"]
    source, _ = read_safetensors(root / "text_encoder_2" / "model.safetensors")
    config = model.config.to_dict()
    save_converted(
        tmp_path / "text_encoder_2",
        convert_t5_encoder_state(source, config),
        config,
        component="text_encoder_2",
        source=str(root),
        dtype="float32",
    )
    ids, mask = make_inputs()
    np.testing.assert_array_equal(np.asarray(load_t5_encoder(tmp_path)(ids, mask)), np.asarray(load_t5_encoder(root)(ids, mask)))
