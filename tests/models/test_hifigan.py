"""SpeechT5HifiGan vocoder parity against transformers at fp32 (tiny random-weight models, save_pretrained)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from litefocus_jax.models.hifigan import (
    HifiGanConfig,
    convert_vocoder_state,
    fold_weight_norm,
    init_vocoder,
    load_vocoder,
)
from litefocus_jax.weights.state import ConversionError

_COMMON = dict(
    model_in_dim=64,
    sampling_rate=16000,
    upsample_initial_channel=16,
    resblock_kernel_sizes=[3, 7],
    resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
)
TINY_VOCODER_CONFIGS = {
    # AUDIOLDM2.md §4.1: hop 4, every stage exact x2.
    "tiny": dict(_COMMON, upsample_rates=[2, 2], upsample_kernel_sizes=[4, 4], normalize_before=False),
    # odd kernel - stride (k16/s5, like the real first stage): torch gives 5L+1; also exercises mean/scale.
    "odd": dict(_COMMON, upsample_rates=[5, 2], upsample_kernel_sizes=[16, 4], normalize_before=True),
}
# cvssp/audioldm2 vocoder/config.json (AUDIOLDM2.md §3.4).
REAL_CONFIG = dict(
    model_type="speecht5_hifigan",
    model_in_dim=64,
    sampling_rate=16000,
    upsample_initial_channel=1024,
    upsample_rates=[5, 4, 2, 2, 2],
    upsample_kernel_sizes=[16, 16, 8, 4, 4],
    resblock_kernel_sizes=[3, 7, 11],
    resblock_dilation_sizes=[[1, 3, 5]] * 3,
    leaky_relu_slope=0.1,
    normalize_before=False,
)
REL_TOL = 1e-5  # max |err| / max |ref| at fp32; reached: ~3e-7 (tiny), ~5e-7 (odd)


def build_tiny_vocoder(name: str, seed: int = 0) -> SpeechT5HifiGan:
    torch.manual_seed(seed)
    voc = SpeechT5HifiGan(SpeechT5HifiGanConfig(**TINY_VOCODER_CONFIGS[name])).eval()
    # The default init (std 0.01) gives ~1e-6 amplitudes (AUDIOLDM2.md §4.4); fan-in-scaled weights give
    # outputs of order 0.1-0.5, below tanh saturation, so relative errors mean something.
    with torch.no_grad():
        for pname, p in voc.named_parameters():
            if p.ndim == 3:
                fan_in = p.shape[0] * p.shape[2] // 4 if pname.startswith("upsampler") else p.shape[1] * p.shape[2]
                p.normal_(0.0, 0.5 / fan_in**0.5)
            else:
                p.normal_(0.0, 0.1)
        voc.mean.normal_()
        voc.scale.uniform_(0.5, 2.0)
    return voc


@pytest.fixture(scope="module")
def tiny_vocoders(tmp_path_factory):
    """{name: (torch reference, snapshot root whose vocoder/ subfolder holds the saved model)}."""
    out = {}
    for name in TINY_VOCODER_CONFIGS:
        root = tmp_path_factory.mktemp(f"vocoder_{name}")
        ref = build_tiny_vocoder(name)
        ref.save_pretrained(root / "vocoder")
        out[name] = (ref, root)
    return out


def state_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def torch_wave(model, mel: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(mel)).numpy()


def rel_err(out, ref) -> float:
    return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name,frames,length", [("tiny", 13, 52), ("odd", 13, 132)])
def test_vocoder_matches_transformers(tiny_vocoders, name, frames, length):
    ref_voc, root = tiny_vocoders[name]
    voc = load_vocoder(root)
    mel = np.random.default_rng(0).standard_normal((2, frames, 64)).astype(np.float32)
    ref = torch_wave(ref_voc, mel)
    out = voc(mel)
    err = rel_err(out, ref)
    print(f"{name} T={frames}: relative max error {err:.2e} (output max {np.abs(ref).max():.3f})")
    assert out.dtype == jnp.float32
    assert out.shape == ref.shape == (2, length) == (2, voc.config.num_samples(frames))
    assert err <= REL_TOL
    assert 0.05 < np.abs(ref).max() < 0.95  # meaningful and unsaturated amplitudes


def test_unbatched_input(tiny_vocoders):
    ref_voc, root = tiny_vocoders["odd"]
    mel = np.random.default_rng(1).standard_normal((7, 64)).astype(np.float32)
    out = load_vocoder(root / "vocoder")(mel)
    ref = torch_wave(ref_voc, mel)
    assert out.shape == ref.shape == (5 * 2 * 7 + 2,)
    assert rel_err(out, ref) <= REL_TOL


def test_real_config_output_length():
    cfg = HifiGanConfig.from_hf(REAL_CONFIG)
    assert cfg.hop_length == 160
    for frames in (1, 256, 1024, 8000):
        assert cfg.num_samples(frames) == 160 * frames + 32
    # The same formula as torch's ConvTranspose1d output size, per stage.
    n = 13
    for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
        conv = torch.nn.ConvTranspose1d(1, 1, k, stride=u, padding=(k - u) // 2)
        n = conv(torch.zeros(1, 1, n)).shape[-1]
    assert n == cfg.num_samples(13) == 160 * 13 + 32


@pytest.mark.parametrize("style", ["parametrizations", "legacy"])
def test_weight_norm_is_folded(tiny_vocoders, style):
    ref_voc, _ = tiny_vocoders["odd"]
    config = TINY_VOCODER_CONFIGS["odd"]
    plain = convert_vocoder_state(state_numpy(ref_voc), config)
    wn = build_tiny_vocoder("odd")
    wn.apply_weight_norm()  # parametrizations: X.parametrizations.weight.original0 (g) / original1 (v)
    state = state_numpy(wn)
    assert any(k.endswith("parametrizations.weight.original1") for k in state)
    if style == "legacy":
        state = {
            k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): v
            for k, v in state.items()
        }
    folded = convert_vocoder_state(state, config)
    assert folded.keys() == plain.keys()
    for path in plain:
        np.testing.assert_allclose(folded[path], plain[path], rtol=1e-5, atol=1e-7, err_msg=str(path))
    with pytest.raises(ValueError, match="no partner"):
        fold_weight_norm({"conv_pre.weight_g": np.ones((4, 1, 1), np.float32)})


def test_bf16_runs_close_to_fp32(tiny_vocoders):
    _, root = tiny_vocoders["tiny"]
    mel = np.random.default_rng(2).standard_normal((1, 9, 64)).astype(np.float32)
    ref = np.asarray(load_vocoder(root)(mel))
    voc16 = load_vocoder(root, dtype=jnp.bfloat16)
    assert voc16.conv_pre.kernel.dtype == jnp.bfloat16
    out = voc16(mel)
    assert out.dtype == jnp.float32 and out.shape == ref.shape
    rel = np.linalg.norm(np.asarray(out) - ref) / np.linalg.norm(ref)
    print(f"bf16 vocoder: relative L2 error {rel:.2e}")
    assert rel < 5e-2, rel


def test_init_vocoder_has_the_loaded_structure(tiny_vocoders):
    import jax

    _, root = tiny_vocoders["odd"]
    shapes = lambda m: jax.tree_util.tree_map(jnp.shape, m.functional()[1])  # noqa: E731
    assert shapes(init_vocoder(TINY_VOCODER_CONFIGS["odd"], seed=1)) == shapes(load_vocoder(root))


def test_strict_loading_names_missing_and_extra_tensors(tiny_vocoders, tmp_path):
    ref_voc, root = tiny_vocoders["tiny"]
    state = state_numpy(ref_voc)
    config = TINY_VOCODER_CONFIGS["tiny"]
    assert "mean" in state and "scale" in state  # saved although unused: ignored on purpose
    missing = {k: v for k, v in state.items() if k != "resblocks.3.convs2.1.bias"}
    with pytest.raises(ConversionError, match=r"resblocks\.3\.convs2\.1\.bias"):
        convert_vocoder_state(missing, config)
    with pytest.raises(ConversionError, match=r"upsampler\.1\.weight"):
        convert_vocoder_state(dict(state, **{"upsampler.1.weight": np.zeros((8, 8, 4), np.float32)}), config)
    # normalize_before needs the buffers.
    with pytest.raises(ConversionError, match=r"'scale'"):
        convert_vocoder_state({k: v for k, v in state.items() if k != "scale"}, dict(config, normalize_before=True))
    # An extra tensor in a component folder is named by load_vocoder too.
    folder = tmp_path / "vocoder"
    folder.mkdir()
    (folder / "config.json").write_text((root / "vocoder" / "config.json").read_text())
    save_file(dict(state, **{"conv_mid.weight": np.zeros((2, 2, 3), np.float32)}), str(folder / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"conv_mid\.weight"):
        load_vocoder(folder)


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(model_type="speecht5"), "not a SpeechT5HifiGan"),
        (dict(upsample_kernel_sizes=[4]), "equal length"),
        (dict(upsample_rates=[2, 8], upsample_kernel_sizes=[4, 4]), "rate <= kernel"),
        (dict(upsample_initial_channel=18), "divisible"),
        (dict(resblock_dilation_sizes=[[1, 3, 5]]), "resblock"),
    ],
)
def test_bad_config_raises(change, match):
    with pytest.raises(ValueError, match=match):
        HifiGanConfig.from_hf(dict(REAL_CONFIG, **change))


def test_other_models_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16}))
    with pytest.raises(ValueError, match="not a SpeechT5HifiGan"):
        load_vocoder(tmp_path)


def test_bad_input_raises(tiny_vocoders):
    voc = init_vocoder(TINY_VOCODER_CONFIGS["tiny"])
    with pytest.raises(ValueError, match="time-major"):
        voc(np.zeros((1, 64, 10), np.float32))  # (B, F, T)
    with pytest.raises(ValueError, match="squeeze"):
        voc(np.zeros((1, 10, 64, 1), np.float32))  # VAE output, channel axis kept
