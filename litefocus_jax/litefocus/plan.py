"""LiteFocus configuration, the sparse-call plan of a UNet, and seeded compensation indices.

LiteFocus (Tan et al., Interspeech 2024) replaces chosen UNet self-attentions by dual sparse attention:
every query attends to the tokens of its own frequency row plus a shared random subset of
`int(ratio * N)` tokens. The released code redraws that subset with `torch.randperm` at every call; here
all subsets of a generation are drawn up front from one seed and passed into the jitted function as
data, so one compiled function serves every seed (see ../shared/reference/LITEFOCUS.md §3).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Protocol, Union

import numpy as np

from litefocus_jax.kernels.attention import num_compensation_tokens

Level = Union[int, str]  # an index into down_blocks (mirrored in up_blocks), or "mid"


class UNetGeometry(Protocol):
    """What the plan needs of a UNet: its levels and how many self-attentions each holds (`UNetConfig` is one).

    The plan depends on this geometry only, so it sits below the models layer that implements it.
    """

    block_out_channels: Sequence[int]

    def self_attention_calls(self) -> Mapping[Level, int]: ...


DUPLICATE_MODES = ("official", "exact")
RESAMPLE_POLICIES = ("per_call", "per_step", "fixed")
# AudioLDM2: one latent frame = 4 mel frames (VAE) x 160 samples (vocoder hop) at 16 kHz.
AUDIOLDM2_LATENT_FRAME_SECONDS = 0.04


@dataclasses.dataclass(frozen=True)
class LiteFocusConfig:
    """Which UNet self-attentions become LiteFocus dual sparse attention, and how.

    Attributes:
      same_frequency: attend to every token of the query's own frequency row.
      cross_frequency: also attend to a shared random subset of `int(ratio * N)` tokens.
      ratio: the compensation fraction r in (0, 1]; the paper and released code use 0.1.
      duplicates: "official" counts a compensation key that also lies in the query's row twice (the
        released code); "exact" attends to the true union, each key once.
      resample: "per_call" draws a fresh subset for every sparse call of every step (released
        behaviour); "per_step" one subset per denoising step shared by all calls; "fixed" one subset.
      seed: seeds every compensation subset of a generation.
      levels: UNet levels made sparse: an int l means down_blocks[l] and its mirror up_blocks[-1-l],
        "mid" the mid block. The default (1,) is exactly the released call set (20 calls per base UNet call).
      dense_at_or_below_s: length rule: at or below this audio length (seconds) attention stays dense
        (e.g. 10.24, the training length). None: always sparse.
    """

    same_frequency: bool = True
    cross_frequency: bool = True
    ratio: float = 0.1
    duplicates: str = "official"
    resample: str = "per_call"
    seed: int = 0
    levels: tuple[Level, ...] = (1,)
    dense_at_or_below_s: float | None = None

    def __post_init__(self):
        if not (self.same_frequency or self.cross_frequency):
            raise ValueError(
                "LiteFocusConfig: same_frequency and cross_frequency are both False, which leaves no key to "
                "attend to; enable at least one (or pass litefocus=None for dense attention)."
            )
        if not isinstance(self.ratio, (int, float)) or not (0.0 < float(self.ratio) <= 1.0):
            raise ValueError(f"LiteFocusConfig: ratio must lie in (0, 1], got {self.ratio!r} (the paper uses 0.1).")
        if self.duplicates not in DUPLICATE_MODES:
            raise ValueError(f"LiteFocusConfig: duplicates must be one of {DUPLICATE_MODES}, got {self.duplicates!r}.")
        if self.resample not in RESAMPLE_POLICIES:
            raise ValueError(f"LiteFocusConfig: resample must be one of {RESAMPLE_POLICIES}, got {self.resample!r}.")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise ValueError(f"LiteFocusConfig: seed must be an int, got {self.seed!r}.")
        levels = (self.levels,) if isinstance(self.levels, (int, str)) else tuple(self.levels)
        if not levels:
            raise ValueError("LiteFocusConfig: levels is empty; name at least one level, e.g. levels=(1,).")
        for level in levels:
            if not (level == "mid" or (isinstance(level, int) and not isinstance(level, bool) and level >= 0)):
                raise ValueError(f"LiteFocusConfig: a level is a non-negative int or 'mid', got {level!r}.")
        if len(set(levels)) != len(levels):
            raise ValueError(f"LiteFocusConfig: levels {levels} name a level twice.")
        object.__setattr__(self, "levels", levels)
        if self.dense_at_or_below_s is not None:
            limit = self.dense_at_or_below_s
            if not isinstance(limit, (int, float)) or math.isnan(limit) or limit < 0:
                raise ValueError(f"LiteFocusConfig: dense_at_or_below_s must be >= 0 seconds or None, got {limit!r}.")

    def is_active(self, latent_frames: int, latent_frame_seconds: float = AUDIOLDM2_LATENT_FRAME_SECONDS) -> bool:
        """Whether the length rule lets LiteFocus act on a latent of `latent_frames` time frames."""
        if self.dense_at_or_below_s is None:
            return True
        return latent_frames * latent_frame_seconds > self.dense_at_or_below_s + 1e-9


@dataclasses.dataclass(frozen=True)
class LevelPlan:
    """The sparse calls of one UNet level for one sample shape.

    Attributes:
      level: the level (int or "mid").
      calls: sparse self-attention calls per UNet call at this level, in execution order.
      time: T, latent time frames at this level.
      freq_bins: F, frequency rows at this level (taken from the activation shape).
      comp_tokens: K = int(ratio * T * F), compensation keys per call (0 if cross_frequency is off).
    """

    level: Level
    calls: int
    time: int
    freq_bins: int
    comp_tokens: int

    @property
    def key(self) -> str:
        return str(self.level)


@dataclasses.dataclass(frozen=True)
class LiteFocusPlan:
    """Every sparse call of one UNet call, grouped by level. Empty when the length rule keeps it dense."""

    config: LiteFocusConfig
    levels: tuple[LevelPlan, ...]

    @property
    def active(self) -> bool:
        return bool(self.levels)

    @property
    def num_calls(self) -> int:
        return sum(lp.calls for lp in self.levels)


def _halve(n: int, times: int) -> int:
    for _ in range(times):
        n = (n + 1) // 2  # stride-2, pad-1 convolutions ceil-halve
    return n


def make_plan(
    unet_config: UNetGeometry,
    litefocus: LiteFocusConfig | None,
    latent_shape: Sequence[int],
    latent_frame_seconds: float = AUDIOLDM2_LATENT_FRAME_SECONDS,
) -> LiteFocusPlan | None:
    """The sparse calls a UNet makes on a sample of shape `latent_shape` = (B, T, F, C) or (T, F).

    Returns None when `litefocus` is None. Raises ValueError naming a level the UNet lacks.
    """
    if litefocus is None:
        return None
    time, freq = (latent_shape[1], latent_shape[2]) if len(latent_shape) == 4 else tuple(latent_shape)
    if not litefocus.is_active(time, latent_frame_seconds):
        return LiteFocusPlan(litefocus, ())
    counts = unet_config.self_attention_calls()
    n_down = len(unet_config.block_out_channels)
    plans = []
    for level in litefocus.levels:
        if level not in counts:
            have = sorted(counts, key=str)
            raise ValueError(
                f"LiteFocusConfig.levels names level {level!r}, but this UNet has self-attention only at levels "
                f"{have} (an int l means down_blocks[l] and up_blocks[{n_down - 1}-l]; 'mid' the mid block)."
            )
        depth = n_down - 1 if level == "mid" else level
        t, f = _halve(time, depth), _halve(freq, depth)
        k = num_compensation_tokens(t * f, litefocus.ratio) if litefocus.cross_frequency else 0
        if litefocus.cross_frequency and k < 1:
            raise ValueError(
                f"LiteFocus at level {level!r}: int(ratio * N) = int({litefocus.ratio} * {t * f}) = 0 compensation "
                "tokens; raise the ratio, use a longer sample, or set cross_frequency=False."
            )
        plans.append(LevelPlan(level, counts[level], t, f, k))
    return LiteFocusPlan(litefocus, tuple(plans))


def make_comp_indices(plan: LiteFocusPlan, num_steps: int = 1, seed: int | None = None) -> dict[str, np.ndarray]:
    """Draw every compensation subset of a generation up front.

    Args:
      plan: from `make_plan`.
      num_steps: denoising steps (UNet calls) the indices must cover.
      seed: overrides `plan.config.seed`.

    Returns:
      {level key: int32 array (num_steps, calls, K)}: row [s, c] is the subset of sparse call c at step s,
      drawn as `permutation(N)[:K]` (the released `randperm(N)[:K]`). "per_step" repeats one row across
      calls, "fixed" one row everywhere. Empty dict when the plan is inactive or cross_frequency is off.
    """
    cfg = plan.config
    if num_steps < 1:
        raise ValueError(f"make_comp_indices: num_steps must be >= 1, got {num_steps}.")
    if not cfg.cross_frequency:
        return {}
    rng = np.random.default_rng(cfg.seed if seed is None else seed)
    out = {}
    for lp in plan.levels:
        n = lp.time * lp.freq_bins
        draws = {"per_call": (num_steps, lp.calls), "per_step": (num_steps, 1), "fixed": (1, 1)}[cfg.resample]
        rows = np.stack([rng.permutation(n)[: lp.comp_tokens] for _ in range(draws[0] * draws[1])])
        rows = rows.reshape(*draws, lp.comp_tokens).astype(np.int32)
        out[lp.key] = np.ascontiguousarray(np.broadcast_to(rows, (num_steps, lp.calls, lp.comp_tokens)))
    return out


def indices_for_step(indices: Mapping[str, np.ndarray], step) -> dict[str, np.ndarray]:
    """Slice the (steps, calls, K) schedule to the (calls, K) rows of one UNet call (works under jit)."""
    return {key: value[step] for key, value in indices.items()}
