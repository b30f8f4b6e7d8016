"""Scoring a set of generated clips against references and prompts: every metric of `metrics` on `features`' output.

A metric that cannot be computed (no reference set, too few clips for IS's 10 splits, names that do not pair for KL,
no prompts for the CLAP score) is reported as None with the reason under "notes", never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from litefocus_jax.evaluation import metrics as M
from litefocus_jax.evaluation.features import EvalNetworks, embed_clips

# result keys in the paper's order, with their display names
COLUMNS = (
    ("fad", "FAD (VGGish)"),
    ("fd", "FD (PANNs)"),
    ("kl_softmax", "KL"),
    ("kl_sigmoid", "KL (sigmoid)"),
    ("is_mean", "IS"),
    ("kid_mean", "KID"),
    ("clap_mean", "CLAP"),
    ("fad_clap", "FAD (CLAP)"),
)


def score_embedded(gen: dict, ref: dict | None, prompts: Mapping[str, str] | None, nets: EvalNetworks) -> dict:
    """Metrics of embedded generated clips `gen` against embedded references `ref` (both from `embed_clips`)."""
    out: dict = {"clips": len(gen["keys"]), "notes": []}
    notes = out["notes"]

    def attempt(name, fn):
        try:
            out.update(fn())
        except ValueError as e:
            notes.append(f"{name}: {e}")

    if ref is not None:
        out["reference_clips"] = len(ref["keys"])
        attempt("FAD", lambda: {"fad": M.frechet_distance_of(gen["vggish"], ref["vggish"])})
        attempt("FD", lambda: {"fd": M.frechet_distance_of(gen["cnn14"], ref["cnn14"])})
        attempt("KID", lambda: M.kernel_inception_distance(gen["cnn14"], ref["cnn14"]))
        if M.same_name(gen["keys"], ref["keys"]):
            attempt("KL", lambda: M.kl_divergence((gen["keys"], gen["logits"]), (ref["keys"], ref["logits"])))
        else:
            notes.append("KL: fewer than 99 % of the names are shared by the generated and reference sets (KL pairs by name)")
        if gen["clap"] is not None and ref["clap"] is not None:
            attempt("FAD (CLAP)", lambda: {"fad_clap": M.frechet_distance_of(gen["clap"], ref["clap"])})
    else:
        notes.append("FAD, FD, KL, KID: no reference set")
    attempt("IS", lambda: M.inception_score(gen["logits"]))
    if gen["clap"] is None:
        notes.append("CLAP: no CLAP model")
    elif not prompts:
        notes.append("CLAP: no prompts")
    else:
        missing = [k for k in gen["keys"] if k not in prompts]
        if missing:
            notes.append(f"CLAP: no prompt for {len(missing)} clip(s), e.g. {missing[:3]}")
        else:
            text = nets.clap_text([prompts[k] for k in gen["keys"]])
            attempt("CLAP", lambda: M.clap_score(text, gen["clap"]))
    for key, _ in COLUMNS:
        out.setdefault(key, None)
    out["seconds_per_clip_audio"] = float(np.mean(gen["seconds"])) if len(gen["seconds"]) else None
    return out


def score_folders(
    generated: Mapping[str, Path],
    reference: Mapping[str, Path] | None,
    prompts: Mapping[str, str] | None,
    nets: EvalNetworks,
    *,
    policy: str = "first",
    window_s: float = 10.0,
    reference_cache: dict | None = None,
) -> dict:
    """Embed and score. `generated` / `reference`: {key: file}; `reference_cache` (a dict) keeps the embedded
    references between calls (the --generate driver scores many settings against one reference set)."""
    with_clap = nets.clap is not None
    gen = embed_clips(nets, dict(generated), policy=policy, window_s=window_s, with_clap=with_clap)
    ref = None
    if reference:
        cache = reference_cache if reference_cache is not None else {}
        if "ref" not in cache:
            cache["ref"] = embed_clips(nets, dict(reference), policy=None, window_s=window_s, with_clap=with_clap)
        ref = cache["ref"]
    return score_embedded(gen, ref, prompts, nets)
