"""CLAP audio branch and whole ClapModel against transformers (tiny random configs of EVALUATION.md §G.1, saved with
save_pretrained, loaded through `litefocus_jax.load_clap`), conversion strictness, and 0.1 text-only folders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from tiny_pipeline import randomize_clap
from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

import litefocus_jax
from litefocus_jax.models.layers import functional
from litefocus_jax.models.modeling_clap import ClapTextConfig, convert_clap_text_state, load_clap_text
from litefocus_jax.models.modeling_clap_audio import ClapAudioConfig, bicubic_matrix
from litefocus_jax.models.modeling_clap_model import (
    MissingAudioBranchError,
    _builder,
    convert_clap_state,
    load_clap,
)
from litefocus_jax.pipelines.audioldm2.tiny import TINY_CLAP_AUDIO
from litefocus_jax.weights.state import ConversionError, abstract_params, read_safetensors, save_converted

TOL = 1e-5  # max |jax fp32 - torch| on the unit-norm embeddings; reached ~1e-7 vs float64, ~1e-6 vs float32 (printed)
TEXT = dict(
    vocab_size=100, hidden_size=16, intermediate_size=37, num_attention_heads=2, num_hidden_layers=1, max_position_embeddings=64
)
CONFIGS = {
    # the tiny pipeline's (EVALUATION.md §G.1 config A): 16 mel bins, 64 x 64 image, grid 16 -> 8 -> 4 with 4 x 4
    # windows: shifted, masked windows in stages 0-1, the single-window rule in stage 2, two patch mergings; fed 250
    # frames (bicubic resize to 256)
    "A": TINY_CLAP_AUDIO,
    # cvssp's geometry at tiny widths: 64 mel bins, 256 x 256 image, grid 64 -> 32 -> 16 -> 8, 8 x 8 windows; fed
    # real ClapFeatureExtractor output (1001 frames, resized to 1024)
    "B": dict(
        spec_size=256,
        num_mel_bins=64,
        window_size=8,
        patch_embeds_hidden_size=8,
        hidden_size=64,
        depths=[2, 2, 2, 2],
        num_attention_heads=[1, 1, 2, 2],
    ),
}


def build(name: str, seed: int = 0) -> ClapModel:
    torch.manual_seed(seed)
    model = ClapModel(ClapConfig(text_config=TEXT, audio_config=CONFIGS[name], projection_dim=16))
    return randomize_clap(model, 0.2)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request, tmp_path_factory):
    """(name, torch float64 ClapModel, snapshot root with text_encoder/ saved by save_pretrained at float32)."""
    root = tmp_path_factory.mktemp(f"clap{request.param}")
    model = build(request.param)
    model.save_pretrained(root / "text_encoder")
    return request.param, model.double(), root


def audio_inputs(name: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    if name == "A":
        return rng.normal(-40.0, 15.0, (3, 1, 250, 16)).astype(np.float32)
    clips = [rng.standard_normal(n) * 0.1 for n in (48000 * 3, 480000, 1000)]
    clips[0][:48000] *= 1e-4  # a near-silent second
    fe = ClapFeatureExtractor(frequency_min=50, truncation="rand_trunc")
    return fe(clips, sampling_rate=48000, return_tensors="np").input_features  # (3, 1, 1001, 64)


def jitted(clap, method: str):
    apply, params = functional(clap, method)
    fn = jax.jit(apply)
    return lambda *args: np.asarray(fn(params, *args), np.float64)


def torch_audio(model, x):
    with torch.no_grad():
        out = model.get_audio_features(torch.from_numpy(x).to(model.dtype))
    return out.pooler_output.double().numpy(), out.last_hidden_state.double().numpy()


def test_audio_features_match_transformers(tiny):
    name, model, root = tiny
    clap = litefocus_jax.load_clap(root)  # snapshot root -> text_encoder/
    assert clap.has_audio and clap.audio_model.audio_encoder.norm.scale.dtype == jnp.float32
    x = audio_inputs(name)
    out = jitted(clap, "get_audio_features")(jnp.asarray(x))
    ref, ref_hidden = torch_audio(model, x)
    ref32, _ = torch_audio(build(name).float().eval(), x)
    err, err32, torch32 = np.abs(out - ref).max(), np.abs(out - ref32).max(), np.abs(ref32 - ref).max()
    # reached: A 1.1e-7 / 9.0e-7, B 1.3e-7 / 3.7e-7 (torch float32 itself is 8.9e-7 / 3.4e-7 off torch float64)
    print(f"config {name}: audio features max abs error {err:.1e} vs torch float64, {err32:.1e} vs torch float32 ({torch32:.1e})")
    assert out.shape == (3, 16) and err <= TOL and err32 <= TOL
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-6)
    # the un-pooled final tokens in transformers' last_hidden_state layout: every token, not only their mean
    encoder = clap.audio_model.audio_encoder
    apply, params = functional(encoder)
    tokens, _ = jax.jit(apply)(params, jnp.asarray(x))
    hidden = np.asarray(encoder.last_hidden_state(tokens), np.float64)
    rel = np.abs(hidden - ref_hidden).max() / np.abs(ref_hidden).max()
    print(f"config {name}: last_hidden_state {hidden.shape} relative error {rel:.1e}")  # reached: A 4.2e-7, B 5.8e-7
    assert hidden.shape == ref_hidden.shape and rel <= TOL


def test_text_features_and_logits_match_transformers(tiny):
    name, model, root = tiny
    clap = load_clap(root / "text_encoder")
    ids = np.array([[0, 5, 9, 33, 2, 1, 1], [0, 70, 71, 72, 73, 74, 2]])
    mask = (ids != 1).astype(np.int64)
    x = audio_inputs(name)
    text = jitted(clap, "get_text_features")(jnp.asarray(ids), jnp.asarray(mask))
    audio = jitted(clap, "get_audio_features")(jnp.asarray(x))
    with torch.no_grad():
        ref = model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), input_features=torch.from_numpy(x).double()
        )
    err = np.abs(text - ref.text_embeds.numpy()).max()
    logits = np.asarray(clap.logits_per_text(text, audio))
    rel = np.abs(logits - ref.logits_per_text.numpy()).max() / np.abs(ref.logits_per_text.numpy()).max()
    # reached: A 8.2e-8 / 2.9e-7, B 1.8e-7 / 1.4e-7
    print(f"config {name}: text features error {err:.1e}, logits_per_text relative error {rel:.1e}")
    assert text.shape == (2, 16) and err <= TOL and logits.shape == (2, 3) and rel <= TOL


def test_geometry_covers_shifts_merges_and_resize():
    """Config A exercises what the brief asks for: shifted masked windows, the single-window rule, patch merging
    (checked by the parity test above), and the bicubic resize, here against torch directly."""
    cfg = ClapAudioConfig.from_hf(dict(audio_config=CONFIGS["A"], projection_dim=16))
    model = _builder(ClapTextConfig.from_hf(dict(model_type="clap", text_config=TEXT)), cfg, jnp.float32)()
    stages = model.audio_model.audio_encoder.layers
    assert [[(b.res, b.window, b.shift) for b in s.blocks] for s in stages] == [
        [(16, 4, 0), (16, 4, 2)],
        [(8, 4, 0), (8, 4, 2)],
        [(4, 4, 0), (4, 4, 0)],  # the grid is one window: never shifted
    ]
    assert [s.downsample is not None for s in stages] == [True, True, False]
    x = np.random.default_rng(0).standard_normal((1, 1, 250, 16))
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), (256, 16), mode="bicubic", align_corners=True).numpy()
    np.testing.assert_allclose(np.einsum("it,bctf->bcif", bicubic_matrix(250, 256), x), ref, rtol=0, atol=1e-12)


def test_conversion_is_strict_about_audio_keys(tiny):
    name, model, root = tiny
    source, _ = read_safetensors(root / "text_encoder" / "model.safetensors")
    config = model.config.to_dict()
    flat = convert_clap_state(source, config)  # relative_position_index and num_batches_tracked are ignored
    assert ("audio_model", "audio_encoder", "batch_norm", "mean") in flat and ("logit_scale_a",) in flat
    assert (
        any("relative_position_index" in k for k in source)
        and "audio_model.audio_encoder.batch_norm.num_batches_tracked" in source
    )
    key = "audio_model.audio_encoder.layers.1.blocks.1.attention.self.relative_position_bias_table"
    with pytest.raises(ConversionError, match=r"layers\.1\.blocks\.1\.attention\.self\.relative_position_bias_table"):
        convert_clap_state({k: v for k, v in source.items() if k != key}, config)
    with pytest.raises(ConversionError, match=r"missing tensor .*logit_scale_t"):
        convert_clap_state({k: v for k, v in source.items() if k != "logit_scale_t"}, config)
    with pytest.raises(ConversionError, match=r"unexpected tensor 'audio_model\.audio_encoder\.layers\.0\.blocks\.7"):
        convert_clap_state(dict(source, **{"audio_model.audio_encoder.layers.0.blocks.7.output.dense.bias": np.zeros(8)}), config)
    bad = dict(source, **{"audio_projection.linear1.weight": np.zeros((16, 8), np.float32)})
    with pytest.raises(ConversionError, match=r"audio_projection\.linear1\.weight.*\(16, 8\)"):
        convert_clap_state(bad, config)


def test_converted_folder_round_trip_and_text_loader(tiny, tmp_path):
    name, model, root = tiny
    source, _ = read_safetensors(root / "text_encoder" / "model.safetensors")
    config = model.config.to_dict()
    save_converted(
        tmp_path / "text_encoder",
        convert_clap_state(source, config),
        config,
        component="text_encoder",
        source=str(root),
        dtype="float32",
    )
    x = jnp.asarray(audio_inputs(name))
    ref = jitted(load_clap(root), "get_audio_features")(x)
    np.testing.assert_array_equal(jitted(load_clap(tmp_path), "get_audio_features")(x), ref)
    ids = np.array([[0, 5, 9, 2]])
    np.testing.assert_array_equal(np.asarray(load_clap_text(tmp_path)(ids)), np.asarray(load_clap_text(root)(ids)))


def test_text_only_folder_of_release_0_1_loads_and_asks_to_reconvert(tiny, tmp_path):
    name, model, root = tiny
    source, _ = read_safetensors(root / "text_encoder" / "model.safetensors")
    config = model.config.to_dict()
    old = tmp_path / "text_encoder"
    save_converted(
        old, convert_clap_text_state(source, config), config, component="text_encoder", source=str(root), dtype="float32"
    )
    clap = load_clap(tmp_path)
    assert not clap.has_audio
    ids = np.array([[0, 5, 9, 2]])
    np.testing.assert_array_equal(np.asarray(clap.get_text_features(ids)), np.asarray(load_clap(root).get_text_features(ids)))
    with pytest.raises(MissingAudioBranchError, match=r"text branch.*Re-convert.*litefocus-jax convert"):
        clap.get_audio_features(audio_inputs(name))


def test_bad_configs_and_inputs_raise(tiny):
    name, model, root = tiny
    base = dict(model_type="clap", projection_dim=16, audio_config=CONFIGS["A"])
    cases = [
        (dict(enable_fusion=True, fusion_type="aff_2d"), "enable_fusion=True.*fused"),
        (dict(hidden_size=48), "hidden_size 48 must equal"),
        (dict(window_size=3), "window_size 3 does not tile"),
        (dict(num_mel_bins=24), "not a multiple of num_mel_bins"),
        (dict(num_attention_heads=[1, 3, 4]), "not divisible by its 3 attention heads"),
        (dict(hidden_act="mish"), "hidden_act='mish'"),
    ]
    for change, match in cases:
        with pytest.raises(ValueError, match=match):
            ClapAudioConfig.from_hf(dict(base, audio_config=dict(CONFIGS["A"], **change)))
    clap = load_clap(root)
    cfg = clap.audio_config
    frames, mels = cfg.max_frames, cfg.num_mel_bins
    for shape, match in (
        ((1, 4, 10, mels), "4 channel.*fused"),
        ((1, 1, 10, mels + 1), "mel bins"),
        ((1, 1, frames + 1, mels), f"{frames + 1} frames"),
        ((1, 10, mels), "ClapFeatureExtractor layout"),
    ):
        with pytest.raises(ValueError, match=match):
            clap.get_audio_features(np.zeros(shape, np.float32))


def test_cvssp_audio_branch_size():
    """The real text_encoder's audio_config (EVALUATION.md §A.1) builds 68,611,864 parameters incl. the projection."""
    config = dict(
        model_type="clap",
        projection_dim=512,
        audio_config=dict(depths=[2, 2, 12, 2], hidden_size=1024, patch_embeds_hidden_size=128),
        text_config=dict(TEXT),
    )
    cfg = ClapAudioConfig.from_hf(config)
    assert (cfg.freq_ratio, cfg.max_frames, cfg.grid, cfg.num_attention_heads) == (4, 1024, 64, (4, 8, 16, 32))
    _, targets = abstract_params(_builder(ClapTextConfig.from_hf(config), cfg, jnp.float32))
    audio = {k: v for k, v in targets.items() if k[0] in ("audio_model", "audio_projection") and k[-1] not in ("mean", "var")}
    assert sum(int(np.prod(v.shape)) for v in audio.values()) == 68_611_864


def test_bf16_runs_close_to_fp32(tiny):
    name, _, root = tiny
    x = jnp.asarray(audio_inputs(name))
    ref = jitted(load_clap(root), "get_audio_features")(x)
    out = jitted(load_clap(root, dtype=jnp.bfloat16), "get_audio_features")(x)
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    print(f"config {name}: bf16 vs fp32 relative L2 {rel:.1e}")
    assert np.isfinite(out).all() and rel < 5e-2
