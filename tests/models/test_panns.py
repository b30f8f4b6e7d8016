"""PANNs Cnn14 vs audioldm_eval 0.0.3's own Cnn14 (torchlibrosa front end) with random weights, 16 and 32 kHz; the
strict converter and the official file layout ({"model": state dict})."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
from evaluation.references import cnn14_reference

from litefocus_jax.models import panns
from litefocus_jax.models.layers import functional
from litefocus_jax.weights.state import ConversionError


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _jit(module, method="__call__"):
    apply, params = functional(module, method)
    return lambda *a: jax.jit(apply)(params, *a)


def test_cnn14_16k_matches_audioldm_eval(tmp_path):
    model = cnn14_reference(16000, tmp_path)
    rng = np.random.default_rng(0)
    n = 6500  # 41 frames: odd sizes after pooling (41 -> 20 -> 10 -> 5 -> 2 -> 1) exercise the floor; short for CPU time
    wave = (rng.normal(size=(2, n)) * 0.1 + 0.2 * np.sin(np.arange(n) * 0.03)).astype(np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(wave))
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = panns.cnn14_from_torch_state(state, panns.CNN14_16K)
    emb, logits = (np.asarray(a) for a in _jit(ours)(wave))
    want_emb, want_logits = out["2048"].numpy(), out["logits"].numpy()
    print(
        f"Cnn14 16k fp32: embedding rel L2 {_rel_l2(emb, want_emb):.2e}; logits max abs "
        f"{np.abs(logits - want_logits).max():.2e}, rel L2 {_rel_l2(logits, want_logits):.2e}"
    )
    assert emb.shape == (2, 2048) and logits.shape == (2, 527)
    assert _rel_l2(emb, want_emb) < 1e-4 and _rel_l2(logits, want_logits) < 1e-4


@pytest.mark.parametrize("sample_rate", [16000, 32000])
def test_front_end_matches_torchlibrosa(sample_rate):
    """The part that differs between the presets: torchlibrosa's Spectrogram + LogmelFilterBank with audioldm_eval's
    arguments; and the front end built from scratch equals the tensors the checkpoints store."""
    from evaluation.references import CNN14_SETTINGS
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram

    c = CNN14_SETTINGS[sample_rate]
    spec = Spectrogram(
        n_fft=c["window_size"],
        hop_length=c["hop_size"],
        win_length=c["window_size"],
        window="hann",
        center=True,
        pad_mode="reflect",
        freeze_parameters=True,
    )
    logmel = LogmelFilterBank(
        sr=sample_rate,
        n_fft=c["window_size"],
        n_mels=64,
        fmin=c["fmin"],
        fmax=c["fmax"],
        ref=1.0,
        amin=1e-10,
        top_db=None,
        freeze_parameters=True,
    )
    wave = np.random.default_rng(1).normal(size=(2, int(0.7 * sample_rate))).astype(np.float32) * 0.1
    with torch.no_grad():
        want = logmel(spec(torch.from_numpy(wave)))[:, 0].numpy()
    cfg = dataclasses.replace(panns.PRESETS[sample_rate], channels=(2,) * 6)  # front end only: widths irrelevant
    ours = panns.init_cnn14(cfg)
    mel = np.asarray(_jit(ours, "log_mel")(wave))
    print(f"Cnn14 {sample_rate} log-mel fp32: max abs {np.abs(mel - want).max():.2e} dB")
    assert mel.shape == want.shape and np.abs(mel - want).max() < 1e-3  # dB (EVALUATION.md §G.5)
    stft = ours.spectrogram_extractor.stft
    np.testing.assert_allclose(
        np.asarray(stft.conv_real.kernel[...]), spec.stft.conv_real.weight.numpy().transpose(2, 1, 0), atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(stft.conv_imag.kernel[...]), spec.stft.conv_imag.weight.numpy().transpose(2, 1, 0), atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(ours.logmel_extractor.melW[...]), logmel.melW.numpy(), atol=1e-7)


def test_official_file_round_trip_and_strictness(tmp_path):
    cfg = panns.Cnn14Config(channels=(4, 4, 8, 8, 8, 8), classes_num=5)
    model = panns.init_cnn14(cfg, seed=3)
    from flax import nnx, traverse_util

    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
    state = {}
    for path, v in flat.items():
        key = ".".join(str(p) for p in path).replace(".mean", ".running_mean").replace(".var", ".running_var")
        v = np.asarray(v)
        if path[-1] == "kernel":
            v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T if v.ndim == 2 else v.transpose(2, 1, 0)
            key = key.replace(".kernel", ".weight")
        state[key.replace(".scale", ".weight")] = torch.from_numpy(np.array(v))
    state["bn0.num_batches_tracked"] = torch.tensor(0)
    torch.save({"model": state, "iteration": 1}, tmp_path / "Cnn14.pth")
    # the official files hold the 16 / 32 kHz presets; a tiny one goes through the same path by its converter
    flat = panns.convert_cnn14_state({k: v.numpy() for k, v in state.items()}, cfg)
    wave = np.random.default_rng(0).normal(size=(1, 8000)).astype(np.float32)
    apply, params = functional(model)
    run = jax.jit(apply)  # one program for every parameter set below
    rebuilt = panns.cnn14_from_torch_state({k: v.numpy() for k, v in state.items()}, cfg)
    np.testing.assert_allclose(
        np.asarray(run(functional(rebuilt)[1], wave)[1]), np.asarray(run(params, wave)[1]), rtol=1e-6, atol=1e-6
    )
    assert len(flat) == len(state) - 1
    # a converted folder (what convert_cnn14_checkpoint writes for the presets) loads without torch
    from litefocus_jax.weights.state import save_converted

    save_converted(tmp_path / "cnn14", flat, cfg.to_dict(), component="cnn14", source="test", dtype="float32")
    loaded = panns.load_cnn14(tmp_path / "cnn14")
    assert loaded.config == cfg
    np.testing.assert_array_equal(np.asarray(run(functional(loaded)[1], wave)[1]), np.asarray(run(params, wave)[1]))
    bad = {k: v.numpy() for k, v in state.items() if k != "conv_block3.bn2.running_var"}
    with pytest.raises(ConversionError, match="conv_block3.bn2"):
        panns.convert_cnn14_state(bad, cfg)
    with pytest.raises(ConversionError, match="fc1"):  # a misshapen tensor is named with both shapes
        panns.convert_cnn14_state({**{k: v.numpy() for k, v in state.items()}, "fc1.weight": np.zeros((3, 3), np.float32)}, cfg)
    with pytest.raises(ValueError, match="sample_rate"):
        panns.convert_cnn14_checkpoint(tmp_path / "Cnn14.pth", tmp_path / "out", sample_rate=8000)
    with pytest.raises(ConversionError):  # the official 16 kHz preset rejects the tiny file, naming the keys
        panns.convert_cnn14_checkpoint(tmp_path / "Cnn14.pth", tmp_path / "out", sample_rate=16000)
