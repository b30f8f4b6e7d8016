"""The quality metrics of audioldm_eval 0.0.3 (the AudioLDM line's standard), to the formula, on embeddings.

Every function here takes the per-file (or per-example) embeddings that `evaluation.features` extracts and returns
plain floats. Definitions (EVALUATION.md §E; audioldm_eval 0.0.3 `metrics/*.py`):

  FD / FAD   ||mu_g - mu_r||^2 + Tr S_g + Tr S_r - 2 Tr sqrtm(S_g S_r); mu = mean, S = np.cov(rowvar=False) (N - 1).
             FD on PANNs Cnn14 "2048" embeddings (one per file), FAD on VGGish 128-d pre-ReLU embeddings (one per
             0.96 s example, all examples of all files pooled), CLAP-FAD on CLAP audio embeddings (one per file).
  KL         pairs rows by file name; p = softmax (or sigmoid) of Cnn14 logits, EPS = 1e-6:
             sum_n sum_c p_r (log p_r - log(p_g + EPS)) / N = KL(reference || generated); sigmoid: same sum, the
             p log(p / q) term only (torch `kl_div(..., reduction="sum")`).
  IS         generated logits only; rows permuted by RandomState(2020); 10 contiguous splits; per split
             exp(mean_n sum_c p (log p - log mean_split p)); mean and population std over the splits.
  KID        Cnn14 "2048"; 100 subsets of m = min(1000, N_g, N_r) rows drawn without replacement by RandomState(2020);
             k(x, y) = (x.y / d + 1)^3; unbiased MMD^2; mean and population std over the subsets.
  CLAP score mean over files of cos(text embedding of the file's prompt, audio embedding of the file).

The Frechet distance uses the eigenvalue form Tr sqrtm(S_g S_r) = sum sqrt(max(eig(A S_r A), 0)) with A = S_g^(1/2)
(symmetric, `eigh`), in float64 on the host: equal to scipy's `sqrtm` route to ~1e-9 relative, and it never fails on a
singular product (audioldm_eval then retries with 1e-6 on the diagonal). Everything runs in float64.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

KL_EPS = 1e-6  # audioldm_eval's EPS inside log(p_g + EPS)
IS_SPLITS, IS_SEED = 10, 2020
KID_SUBSETS, KID_SUBSET_SIZE, KID_DEGREE, KID_COEF0, KID_SEED = 100, 1000, 3, 1.0, 2020
SAME_NAME_THRESHOLD = 0.99  # audioldm_eval: KL needs > 99 % of names shared both ways


def _matrix(x, what: str, min_rows: int = 1) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 2 or a.shape[0] < min_rows:
        raise ValueError(f"{what}: expected an (N >= {min_rows}, D) array of embeddings, got shape {a.shape}.")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: the embeddings contain NaN or Inf.")
    return a


def gaussian_stats(embeddings) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> (mu (D,), sigma (D, D)) in float64; sigma = np.cov(rowvar=False) (unbiased). Needs N >= 2."""
    x = _matrix(embeddings, "gaussian_stats", min_rows=2)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64, eigenvalue form (module docstring)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}.")
    root = _sqrt_psd(s1)
    eig = np.linalg.eigvalsh(root @ s2 @ root)
    tr_covmean = np.sqrt(np.maximum(eig, 0.0)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_of(generated, reference) -> float:
    """FD/FAD of two embedding sets (N_g, D), (N_r, D): audioldm_eval's `calculate_fid` / `FrechetAudioDistance`."""
    return frechet_distance(*gaussian_stats(generated), *gaussian_stats(reference))


def same_name(generated: Sequence[str], reference: Sequence[str], threshold: float = SAME_NAME_THRESHOLD) -> bool:
    """audioldm_eval's `get_filename_intersection_ratio`: more than 99 % of the names shared both ways."""
    g, r = set(generated), set(reference)
    if not g or not r:
        return False
    shared = len(g & r)
    return shared / len(g) > threshold and shared / len(r) > threshold


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _kl_sum(p_ref: np.ndarray, p_gen: np.ndarray) -> float:
    """torch `kl_div(log(p_gen + EPS), p_ref, reduction="sum")`: sum p_ref (log p_ref - log(p_gen + EPS)), 0 where
    p_ref == 0."""
    safe = np.where(p_ref > 0, p_ref, 1.0)
    return float(np.sum(np.where(p_ref > 0, p_ref * (np.log(safe) - np.log(p_gen + KL_EPS)), 0.0)))


def kl_divergence(
    generated: Mapping[str, np.ndarray] | tuple[Sequence[str], np.ndarray],
    reference: Mapping[str, np.ndarray] | tuple[Sequence[str], np.ndarray],
) -> dict[str, float | int]:
    """audioldm_eval's `calculate_kl`: KL(reference || generated) of Cnn14 logits paired by file name.

    Args:
      generated / reference: (names (N,), logits (N, C)) or {name: logits (C,)}; reference names missing from the
        generated set are skipped, as audioldm_eval does.

    Returns:
      {"kl_softmax", "kl_sigmoid", "pairs"}; raises ValueError when no name is shared.
    """
    gen, ref = (dict(x) if isinstance(x, Mapping) else dict(zip(x[0], x[1])) for x in (generated, reference))
    keys = [k for k in ref if k in gen]
    if not keys:
        raise ValueError("kl_divergence: no file name is shared by the generated and reference sets (KL pairs by name).")
    lg = _matrix(np.stack([gen[k] for k in keys]), "kl_divergence (generated logits)")
    lr = _matrix(np.stack([ref[k] for k in keys]), "kl_divergence (reference logits)")
    n = len(keys)
    return {
        "kl_softmax": _kl_sum(_softmax(lr), _softmax(lg)) / n,
        "kl_sigmoid": _kl_sum(_sigmoid(lr), _sigmoid(lg)) / n,
        "pairs": n,
    }


def inception_score(logits, splits: int = IS_SPLITS, seed: int = IS_SEED) -> dict[str, float]:
    """audioldm_eval's `calculate_isc(samples_shuffle=True)`: (N, C) logits -> {"is_mean", "is_std"}.

    Needs N >= splits (an empty split makes audioldm_eval's mean NaN).
    """
    x = _matrix(logits, "inception_score")
    n = x.shape[0]
    if n < splits:
        raise ValueError(f"inception_score: {n} clips for {splits} splits; score at least {splits} clips.")
    x = x[np.random.RandomState(seed).permutation(n)]
    p, log_p = _softmax(x), _log_softmax(x)
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        q = p[part].mean(axis=0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(p[part] * (log_p[part] - np.log(q)), axis=1))))
    return {"is_mean": float(np.mean(scores)), "is_std": float(np.std(scores))}


def _polynomial_mmd(x: np.ndarray, y: np.ndarray, degree: int, coef0: float) -> float:
    gamma = 1.0 / x.shape[1]
    kxx, kyy, kxy = ((a @ b.T * gamma + coef0) ** degree for a, b in ((x, x), (y, y), (x, y)))
    m = x.shape[0]
    off = lambda k: k.sum() - np.trace(k)  # noqa: E731
    return float((off(kxx) + off(kyy)) / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(
    generated,
    reference,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    degree: int = KID_DEGREE,
    coef0: float = KID_COEF0,
    seed: int = KID_SEED,
) -> dict[str, float]:
    """audioldm_eval's `calculate_kid(gamma=None)` on (N_g, D), (N_r, D) embeddings -> {"kid_mean", "kid_std"}."""
    x, y = _matrix(generated, "kernel_inception_distance (generated)"), _matrix(reference, "kernel_inception_distance")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"kernel_inception_distance: {x.shape[1]}-d and {y.shape[1]}-d embeddings.")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("kernel_inception_distance: needs at least 2 clips in each set.")
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        mmds[i] = _polynomial_mmd(a, b, degree, coef0)
    return {"kid_mean": float(np.mean(mmds)), "kid_std": float(np.std(mmds))}


def clap_score(text_embeddings, audio_embeddings) -> dict[str, float]:
    """Mean and population std over pairs of cos(text_i, audio_i): (N, D), (N, D) -> {"clap_mean", "clap_std"}."""
    t, a = _matrix(text_embeddings, "clap_score (text)"), _matrix(audio_embeddings, "clap_score (audio)")
    if t.shape != a.shape:
        raise ValueError(f"clap_score: {t.shape} text and {a.shape} audio embeddings; give one prompt per clip.")
    cos = np.sum(t * a, axis=1) / (np.linalg.norm(t, axis=1) * np.linalg.norm(a, axis=1) + 1e-8)
    return {"clap_mean": float(cos.mean()), "clap_std": float(cos.std())}
