"""Each metric equals audioldm_eval 0.0.3's function on the same embeddings (loaded from the installed package)."""

import numpy as np
import pytest
import torch
from evaluation.references import audioldm_eval_module

from litefocus_jax.evaluation import metrics


def _feats(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


@pytest.mark.parametrize("n", [300, 40])  # 40 < d: singular covariances (scipy's sqrtm route needs its retry)
def test_frechet_distance_matches_calculate_fid(n):
    fid = audioldm_eval_module("metrics/fid.py")
    g, r = _feats(n, 64, 0), _feats(n + 7, 64, 1, shift=0.3)
    want = fid.calculate_fid({"2048": torch.from_numpy(g)}, {"2048": torch.from_numpy(r)}, "2048")["frechet_distance"]
    got = metrics.frechet_distance_of(g, r)
    assert got == pytest.approx(want, rel=1e-6), (got, want)


def test_frechet_distance_matches_fad_class_formula():
    fad = audioldm_eval_module("metrics/fad.py")
    g, r = _feats(200, 32, 2), _feats(150, 32, 3, shift=-0.5)
    helper = fad.FrechetAudioDistance.__new__(fad.FrechetAudioDistance)  # no model download: only its formulas
    want = helper.calculate_frechet_distance(*helper.calculate_embd_statistics(g), *helper.calculate_embd_statistics(r))
    assert metrics.frechet_distance_of(g, r) == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kl_matches_calculate_kl_paired_by_name(dtype):
    kl = audioldm_eval_module("metrics/kl.py")
    rng = np.random.default_rng(4)
    names = [f"{i:03d}.wav" for i in range(12)]
    lg, lr = rng.normal(size=(12, 527)) * 3, rng.normal(size=(12, 527)) * 3
    order = rng.permutation(12)  # the generated set is listed in another order: pairing must go by name
    ref, _, _ = kl.calculate_kl(
        {"logits": torch.from_numpy(lg[order]).to(dtype), "file_path_": [f"/gen/{names[i]}" for i in order]},
        {"logits": torch.from_numpy(lr).to(dtype), "file_path_": [f"/ref/{n}" for n in names]},
        "logits",
        same_name=True,
    )
    got = metrics.kl_divergence(([names[i] for i in order], lg[order]), (names, lr))
    rel = 1e-9 if dtype == torch.float64 else 1e-5
    assert got["kl_softmax"] == pytest.approx(ref["kullback_leibler_divergence_softmax"], rel=rel)
    assert got["kl_sigmoid"] == pytest.approx(ref["kullback_leibler_divergence_sigmoid"], rel=rel)
    assert got["pairs"] == 12


def test_kl_skips_unpaired_and_refuses_disjoint_names():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(2, 5))
    got = metrics.kl_divergence((["x", "y", "z"], a), (["y", "w"], b))
    assert got["pairs"] == 1
    with pytest.raises(ValueError, match="no file name is shared"):
        metrics.kl_divergence((["x"], a[:1]), (["w"], b[:1]))
    assert metrics.same_name(["a", "b"], ["a", "b"]) and not metrics.same_name(["a", "b"], ["a", "c"])


@pytest.mark.parametrize("n", [10, 57])
def test_inception_score_matches_calculate_isc(n):
    isc = audioldm_eval_module("metrics/isc.py")
    logits = np.random.default_rng(n).normal(size=(n, 527)) * 2
    want = isc.calculate_isc({"logits": torch.from_numpy(logits).float()}, "logits", 2020, True, 10)
    got = metrics.inception_score(logits.astype(np.float32))
    assert got["is_mean"] == pytest.approx(want["inception_score_mean"], rel=1e-9)
    assert got["is_std"] == pytest.approx(want["inception_score_std"], rel=1e-6, abs=1e-12)
    with pytest.raises(ValueError, match="at least 10 clips"):
        metrics.inception_score(logits[:9])


@pytest.mark.parametrize("sizes", [(40, 30), (25, 60)])
def test_kid_matches_calculate_kid(sizes):
    kid = audioldm_eval_module("metrics/kid.py")
    g, r = _feats(sizes[0], 48, 6), _feats(sizes[1], 48, 7, shift=0.2)
    want = kid.calculate_kid({"2048": torch.from_numpy(g)}, {"2048": torch.from_numpy(r)}, 100, 1000, 3, None, 1, 2020, "2048")
    got = metrics.kernel_inception_distance(g, r)
    assert got["kid_mean"] == pytest.approx(want["kernel_inception_distance_mean"], rel=1e-9)
    assert got["kid_std"] == pytest.approx(want["kernel_inception_distance_std"], rel=1e-9)


def test_clap_score_is_mean_cosine():
    rng = np.random.default_rng(8)
    t, a = rng.normal(size=(6, 16)), rng.normal(size=(6, 16))
    want = torch.nn.functional.cosine_similarity(torch.from_numpy(t), torch.from_numpy(a), dim=1, eps=1e-8)
    got = metrics.clap_score(t, a)
    assert got["clap_mean"] == pytest.approx(float(want.mean()), rel=1e-9)
    assert got["clap_std"] == pytest.approx(float(want.std(unbiased=False)), rel=1e-9)
    with pytest.raises(ValueError, match="one prompt per clip"):
        metrics.clap_score(t[:5], a)
