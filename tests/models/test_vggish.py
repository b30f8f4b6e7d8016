"""VGGish vs torchvggish 0.2 (the PyPI copy of harritaylor/torchvggish) with random weights, as audioldm_eval's FAD
uses it (no PCA, last ReLU removed); the front end vs `waveform_to_examples`; the strict converter."""

import numpy as np
import pytest
import torch
from evaluation.references import vggish_reference

from litefocus_jax.models import vggish as V
from litefocus_jax.weights.state import ConversionError


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_vggish_matches_torchvggish(tmp_path):
    model, waveform_to_examples = vggish_reference()
    rng = np.random.default_rng(0)
    wave = (rng.normal(size=int(2.5 * 16000)) * 0.1 + 0.3 * np.sin(np.arange(40000) * 0.05)).astype(np.float64)
    ref_examples = waveform_to_examples(wave, 16000, return_tensor=True).detach()  # (2, 1, 96, 64)
    ours_examples = V.waveform_to_examples(wave)
    assert ours_examples.shape == (2, 96, 64)
    np.testing.assert_allclose(ours_examples, ref_examples[:, 0].numpy(), atol=1e-5, rtol=0)
    with torch.no_grad():
        want = model(ref_examples).numpy()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = np.asarray(V.vggish_from_torch_state(state)(ref_examples[:, 0].numpy()))
    err = _rel_l2(ours, want)
    print(f"VGGish fp32: max abs {np.abs(ours - want).max():.2e}, rel L2 {err:.2e}")
    assert ours.shape == (2, 128) and (want < 0).any()  # pre-ReLU output, as audioldm_eval's FAD uses
    assert err < 1e-5

    # the strict converter: a missing or misshapen tensor names the key
    bad = dict(state)
    bad.pop("embeddings.4.bias")
    with pytest.raises(ConversionError, match="embeddings.4.bias"):
        V.convert_vggish_state(bad)
    bad = dict(state, **{"features.0.weight": np.zeros((64, 1, 5, 5), np.float32)})
    with pytest.raises(ConversionError, match="features.0.weight"):
        V.convert_vggish_state(bad)


def test_official_file_round_trip(tmp_path):
    """The official layout (a flat torch state dict) -> safetensors folder -> load without torch (tiny widths)."""
    cfg = V.VGGishConfig(channels=(4, 4, 8, 8, 8, 8), hidden=16, embedding=8)
    g = torch.Generator().manual_seed(1)
    state, cin = {}, 1
    for i, cout in zip(V.CONV_INDICES, cfg.channels):
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = (
            torch.randn(cout, cin, 3, 3, generator=g),
            torch.randn(cout, generator=g),
        )
        cin = cout
    for i, (fin, fout) in zip((0, 2, 4), ((cfg.flat, 16), (16, 16), (16, 8))):
        state[f"embeddings.{i}.weight"], state[f"embeddings.{i}.bias"] = (
            torch.randn(fout, fin, generator=g),
            torch.randn(fout, generator=g),
        )
    torch.save(state, tmp_path / "vggish-10086976.pth")
    folder = V.convert_vggish_checkpoint(tmp_path / "vggish-10086976.pth", tmp_path / "vggish", cfg)
    x = np.random.default_rng(2).normal(size=(3, 96, 64)).astype(np.float32)
    want = V.vggish_from_torch_state({k: v.numpy() for k, v in state.items()}, cfg)(x)
    np.testing.assert_array_equal(np.asarray(V.load_vggish(folder)(x)), np.asarray(want))
    with pytest.raises(ValueError, match="'model' entry"):
        V.read_torch_checkpoint(tmp_path / "vggish-10086976.pth", "PANNs", entry="model")


def test_short_clips_give_no_examples():
    assert V.waveform_to_examples(np.zeros(V.MIN_SAMPLES - 1)).shape == (0, 96, 64)
    assert V.waveform_to_examples(np.zeros(V.MIN_SAMPLES)).shape == (1, 96, 64)
    with pytest.raises(ValueError, match="mono"):
        V.waveform_to_examples(np.zeros((2, 20000)))


def test_conversion_without_torch_says_so(tmp_path, monkeypatch):
    import sys

    (tmp_path / "v.pth").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match="needs torch"):
        V.convert_vggish_checkpoint(tmp_path / "v.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()
