"""Attention-pattern analysis: how much of a UNet self-attention query's probability lies on its own frequency row.

LiteFocus rests on one observation (Tan et al., Interspeech 2024, Figure 2): in AudioLDM2's UNet
self-attention a query attends mostly to the keys of its **own frequency row** (the T tokens sharing its
frequency f, token n = t * F + f). This module measures that during a real generation:

    capture = capture_attention(pipe, "rain on a tin roof", weights="cvssp/audioldm2",
                                audio_length_in_s=10.24, num_inference_steps=50, steps=(0, 25, 49))
    print(format_table(summarize(capture)))      # same-row mass per level vs. the uniform 1/F
    save_heatmaps(capture, "maps/")                # Figure-2 style maps, needs litefocus-jax[analysis]
    write_report(capture, "maps/report.json")

The probabilities are those of **dense** softmax(q k^T * scale) for a few chosen queries over all N keys,
(B, H, Q, N) per captured call, even when the generation itself runs LiteFocus: they show what LiteFocus
keeps and drops. Computing them for Q chosen queries costs Q x N per call, never N x N.

Weights: state them (`weights=`). With random weights (`RANDOM_WEIGHTS`) everything runs, but the maps
carry no learned structure; the capture warns and every table, report and figure says so.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.litefocus.plan import Level, LiteFocusConfig, make_plan
from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import guided_eps
from litefocus_jax.schedulers.factory import make_scheduler

RANDOM_WEIGHTS = "random"
RANDOM_WEIGHTS_NOTE = (
    "RANDOM WEIGHTS: the model is untrained, so these attention maps carry no learned structure; a same-row "
    "mass near the uniform baseline 1/F is expected here and says nothing about LiteFocus. Load real weights "
    "(e.g. cvssp/audioldm2) to reproduce the paper's same-frequency concentration."
)
MATPLOTLIB_HINT = 'drawing attention heat maps needs matplotlib: pip install "litefocus-jax[analysis]"'
PROBS_NAME = "attention_probs"  # what Attention sows (litefocus_jax/models/attention_processor.py)


@dataclasses.dataclass(frozen=True)
class AttentionSite:
    """One UNet self-attention module and what is captured there.

    Attributes:
      name: its path in the UNet, as diffusers names it, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn1".
      level: the UNet level: l for down_blocks[l] and its mirror up_blocks[-1-l], or "mid".
      grid: (T, F) token grid at that level; token n = t * F + f.
      queries: captured query token indices (empty until chosen).
    """

    name: str
    level: Level
    grid: tuple[int, int]
    queries: tuple[int, ...] = ()

    @property
    def freq_bins(self) -> int:
        return self.grid[1]


@dataclasses.dataclass(frozen=True)
class AttentionCapture:
    """Dense attention probabilities of chosen queries, per captured denoising step and self-attention site.

    Attributes:
      probs: {(step, site name): float32 (B', H, Q, N)} with B' = the UNet batch ([uncond; cond] with
        guidance), Q = len(site.queries), N = T * F of the site's grid.
      sites: the captured sites, in UNet execution order.
      steps / timesteps: captured step indices (0 = first denoising step) and their UNet timesteps.
      batch_rows: a label per row of B' ("uncond", "cond").
      weights: what the weights are (a model id or path, or RANDOM_WEIGHTS).
      litefocus: the LiteFocusConfig the generation ran with; None = dense (also when its length rule kept it
        dense). The captured probabilities are dense either way.
    """

    probs: Mapping[tuple[int, str], np.ndarray]
    sites: tuple[AttentionSite, ...]
    steps: tuple[int, ...]
    timesteps: tuple[int, ...]
    batch_rows: tuple[str, ...]
    weights: str
    prompt: str
    negative_prompt: str
    audio_length_in_s: float
    num_inference_steps: int
    guidance_scale: float
    seed: int
    litefocus: LiteFocusConfig | None

    @property
    def random_weights(self) -> bool:
        return self.weights == RANDOM_WEIGHTS

    @property
    def weights_note(self) -> str:
        return RANDOM_WEIGHTS_NOTE if self.random_weights else f"weights: {self.weights}"

    def site(self, name: str) -> AttentionSite:
        return next(s for s in self.sites if s.name == name)


# ---------------------------------------------------------------------------------------------- pure measures


def row_mass(probs, freq_bins: int, query_indices: Sequence[int]) -> np.ndarray:
    """Fraction of each query's attention that falls on its own frequency row.

    Args:
      probs: (..., Q, N) probabilities over N = T * F keys (e.g. (B, H, Q, N)), token n = t * F + f.
      freq_bins: F.
      query_indices: the Q query token indices (a query's row is index % F).

    Returns:
      float64 (..., Q): sum of probs over keys j with j % F == query % F. Uniform attention gives 1/F.
    """
    probs = np.asarray(probs, np.float64)
    queries = np.asarray(query_indices)
    n = probs.shape[-1]
    if freq_bins < 1 or n % freq_bins:
        raise ValueError(f"row_mass: N = {n} keys is not a whole number of frequency rows of F = {freq_bins}.")
    if probs.ndim < 2 or queries.shape != (probs.shape[-2],):
        raise ValueError(f"row_mass: {queries.shape} query indices for probs of shape {probs.shape} (..., Q, N).")
    same_row = (np.arange(n) % freq_bins)[None, :] == (queries % freq_bins)[:, None]  # (Q, N)
    return np.where(same_row, probs, 0.0).sum(axis=-1)


def key_grid(probs, grid: tuple[int, int]) -> np.ndarray:
    """(..., N) probabilities over keys -> (..., T, F) on the key grid (token n = t * F + f)."""
    probs = np.asarray(probs)
    return probs.reshape(*probs.shape[:-1], *grid)


def spread_queries(grid: tuple[int, int], count: int) -> tuple[int, ...]:
    """`count` query tokens spread over the grid: evenly over time, cycling over frequency rows.

    The (j+0.5)/count time quantiles keep queries off the edges; rows step by F/count so few queries
    still cover low, middle and high frequencies.
    """
    t_bins, f_bins = grid
    if not 1 <= count <= t_bins * f_bins:
        raise ValueError(f"queries={count}: choose 1 to {t_bins * f_bins} queries for a {t_bins}x{f_bins} grid.")
    tokens = []
    for j in range(count):
        t = min(t_bins - 1, (2 * j + 1) * t_bins // (2 * count))
        f = (j * f_bins // count) if count <= f_bins else j % f_bins
        token = t * f_bins + f
        while token in tokens:  # only when count > T: take the next free token
            token = (token + 1) % (t_bins * f_bins)
        tokens.append(token)
    return tuple(tokens)


# ---------------------------------------------------------------------------------------------- sites


def self_attention_sites(unet_config, latent_shape: Sequence[int]) -> tuple[AttentionSite, ...]:
    """Every self-attention module of a UNet (attn1, and attn2 of double-self-attention blocks), execution order.

    Args:
      unet_config: the UNet's `UNetConfig`.
      latent_shape: (B, T, F, C) or (T, F) of the latent; fixes each level's token grid.
    """
    n = len(unet_config.block_out_channels)
    counts = unet_config.self_attention_calls()
    everywhere = LiteFocusConfig(cross_frequency=False, levels=tuple(counts))
    grids = {lp.level: (lp.time, lp.freq_bins) for lp in make_plan(unet_config, everywhere, latent_shape).levels}
    groups = [
        (f"down_blocks.{l}", l, unet_config.layers_per_block[l])
        for l in range(n)
        if unet_config.down_block_types[l] == "CrossAttnDownBlock2D"
    ]
    groups.append(("mid_block", "mid", 1))
    groups += [
        (f"up_blocks.{k}", n - 1 - k, unet_config.layers_per_block[n - 1 - k] + 1)
        for k in range(n)
        if unet_config.up_block_types[k] == "CrossAttnUpBlock2D"
    ]
    sites = []
    for prefix, level, resnets in groups:
        at = n - 1 if level == "mid" else level
        dims, layers = unet_config.cross_attention_dims[at], unet_config.transformer_layers_per_block[at]
        for r in range(resnets):
            for idx, dim in enumerate(dims):
                for j in range(layers):
                    base = f"{prefix}.attentions.{r * len(dims) + idx}.transformer_blocks.{j}"
                    names = ("attn1", "attn2") if dim is None else ("attn1",)
                    sites += [AttentionSite(f"{base}.{a}", level, grids[level]) for a in names]
    assert len(sites) == sum(counts.values()), "site enumeration disagrees with UNetConfig.self_attention_calls"
    return tuple(sites)


def choose_sites(sites: Sequence[AttentionSite], blocks=None, queries=4) -> tuple[AttentionSite, ...]:
    """Select sites and attach their queries.

    Args:
      sites: from `self_attention_sites`.
      blocks: None (all), or an iterable of site names and/or levels (an int l or "mid": every site of that level).
      queries: an int (that many `spread_queries` per site), a sequence of token indices (every site), or
        {level: token indices}.
    """
    chosen = _matching(sites, blocks)
    if not chosen:
        raise ValueError("blocks is empty: name sites or levels, or pass None for every self-attention.")
    return tuple(dataclasses.replace(s, queries=_queries_for(s, queries)) for s in chosen)


def _matching(sites: Sequence[AttentionSite], blocks) -> list[AttentionSite]:
    """The sites named by `blocks` (None: all; else site names and/or levels). Raises on a name that matches nothing."""
    if blocks is None:
        return list(sites)
    wanted = [blocks] if isinstance(blocks, (str, int)) else list(blocks)
    unknown = [b for b in wanted if not any(b in (s.name, s.level) for s in sites)]
    if unknown:
        raise ValueError(
            f"blocks: {unknown} match no site here; known levels {sorted({s.level for s in sites}, key=str)}, "
            f"names like {sites[0].name!r}."
        )
    return [s for s in sites if s.name in wanted or s.level in wanted]


def _queries_for(site: AttentionSite, queries) -> tuple[int, ...]:
    if isinstance(queries, (int, np.integer)) and not isinstance(queries, bool):
        return spread_queries(site.grid, int(queries))
    if isinstance(queries, Mapping):
        if site.level not in queries:
            raise ValueError(f"queries: no entry for level {site.level!r} (needed by {site.name}); give every captured level.")
        queries = queries[site.level]
    tokens = tuple(int(q) for q in queries)
    n = site.grid[0] * site.grid[1]
    if not tokens or any(not 0 <= q < n for q in tokens):
        raise ValueError(
            f"queries {tokens} for {site.name}: need one or more token indices in [0, {n}) "
            f"(grid {site.grid[0]}x{site.grid[1]}, token = t * {site.grid[1]} + f)."
        )
    return tokens


def _module_at(root, name: str):
    for part in name.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


# ---------------------------------------------------------------------------------------------- capture


def _resolve_steps(steps, total: int) -> tuple[int, ...]:
    resolved = sorted({int(s) + total if int(s) < 0 else int(s) for s in steps})
    if not resolved or resolved[0] < 0 or resolved[-1] >= total:
        raise ValueError(f"steps {tuple(steps)}: give step indices in [0, {total}) (negative counts from the end).")
    return tuple(resolved)


def _step_fn(graphdef, step_fn, cfg: bool, litefocus):
    """One jitted denoising step of `graphdef`'s UNet -> (x, state, {site name: probs}), with the pipeline's
    `guided_eps` (CFG by batch doubling, the step's LiteFocus indices)."""

    def step(params, x, state, i, t, idx, t5, t5_mask, generated, guidance):  # the order of encode_prompt's outputs
        unet = nnx.capture(nnx.merge(graphdef, params), nnx.Intermediate)
        captured = []

        def call(*args, **kwargs):
            eps, inter = unet(*args, **kwargs)
            captured.append(inter)
            return eps

        eps = guided_eps(call, x, t, idx, t5, t5_mask, generated, guidance, cfg=cfg, litefocus=litefocus)
        inter = captured[0]
        state, x = step_fn(state, eps.astype(x.dtype), i, x, None)
        probs = {".".join(map(str, path[:-1])): var.get_value()[0] for path, var in nnx.to_flat_state(inter)}
        return x, state, probs

    return jax.jit(step)


def _capturing_graphdef(pipe, sites):
    """The pipeline UNet's graph with `capture_queries` set on the chosen sites (the pipeline's own is untouched)."""
    graphdef, params = pipe.modules["unet"]
    unet = nnx.merge(graphdef, params)
    for site in sites:
        _module_at(unet, site.name).capture_queries = site.queries
    return nnx.split(unet)[0]


def capture_attention(
    pipe,
    prompt: str,
    *,
    weights: str,
    negative_prompt: str = "",
    audio_length_in_s: float | None = None,
    num_inference_steps: int = 50,
    steps: Sequence[int] = (0,),
    queries=4,
    blocks=None,
    litefocus: LiteFocusConfig | None = None,
    seed: int = 0,
    guidance_scale: float = 3.5,
    latents=None,
) -> AttentionCapture:
    """Run a generation up to the last chosen step and capture dense self-attention probabilities.

    Args:
      pipe: an `AudioLDM2Pipeline`.
      prompt / negative_prompt: one prompt.
      weights: what the weights are, recorded in every output: a model id or path, or RANDOM_WEIGHTS (which
        also warns that the maps carry no learned structure).
      audio_length_in_s, num_inference_steps, guidance_scale, seed, latents: as `AudioLDM2Pipeline.__call__`
        (latents channels-last (1, T, F, C)).
      steps: denoising step indices to capture (0 = first; negative counts from the end).
      queries: per site, an int (spread over the grid), token indices, or {level: token indices}.
      blocks: None (every self-attention), or site names and/or levels (see `choose_sites`).
      litefocus: run the generation with LiteFocus (the captured probabilities stay dense).

    The sampler is the pipeline's (`pipe.scheduler`, eta = 0); steps after the last captured one are not run.

    Returns:
      AttentionCapture with probs (B', H, Q, N) per (step, site); B' = 2 with guidance ([uncond; cond]).
    """
    if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
        raise ValueError("capture_attention takes one prompt and one negative_prompt, each a str.")
    if not isinstance(weights, str) or not weights:
        raise ValueError(f"weights must say what the weights are (a model id or path, or {RANDOM_WEIGHTS!r}), got {weights!r}.")
    prompts, negatives, shape, _ = pipe._check_call(
        prompt, negative_prompt, audio_length_in_s, num_inference_steps, guidance_scale, 1, latents
    )
    sched = make_scheduler(pipe.scheduler, pipe.scheduler_config, num_inference_steps)
    steps = _resolve_steps(steps, len(sched.timesteps))
    sites = choose_sites(self_attention_sites(pipe.unet_config, shape), blocks, queries)
    active, comp = pipe._comp_schedule(litefocus, shape[1:], num_inference_steps)
    if weights == RANDOM_WEIGHTS:
        warnings.warn(RANDOM_WEIGHTS_NOTE, stacklevel=2)
    cfg = guidance_scale > 1.0
    text = pipe.encode_prompt(prompts, negatives, 1, cfg)  # (t5, t5_mask, generated)
    if latents is None:
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)  # item 0's noise, as AudioLDM2Pipeline.__call__
        latents = jax.random.normal(key, shape[1:], jnp.float32)[None]
    probs = _denoise_capturing(
        pipe, sched, sites, steps, active, comp, jnp.asarray(latents, pipe.dtype), text, guidance_scale if cfg else None
    )
    return AttentionCapture(
        probs=probs,
        sites=sites,
        steps=steps,
        timesteps=tuple(int(sched.timesteps[s]) for s in steps),
        batch_rows=("uncond", "cond") if cfg else ("cond",),
        weights=weights,
        prompt=prompt,
        negative_prompt=negative_prompt,
        audio_length_in_s=float(audio_length_in_s or shape[1] * pipe.vae_scale_factor * pipe.vocoder_upsample_factor),
        num_inference_steps=num_inference_steps,
        guidance_scale=float(guidance_scale),
        seed=seed,
        litefocus=active,
    )


def _denoise_capturing(pipe, sched, sites, steps, litefocus, comp, x, text, guidance) -> dict:
    """Denoise from latent x up to the last captured step; {(step, site name): float32 (B', H, Q, N)}.

    Only the captured steps run the capturing graph; the others run the plain UNet (each compiles once).
    """
    cfg = guidance is not None
    plain = _step_fn(pipe.modules["unet"][0], sched.step, cfg, litefocus)
    capturing = _step_fn(_capturing_graphdef(pipe, sites), sched.step, cfg, litefocus)
    params, guidance = pipe.modules["unet"][1], jnp.asarray(guidance or 1.0, jnp.float32)
    state, probs = sched.init_state(x), {}
    for i in range(steps[-1] + 1):  # later steps cannot change what was captured
        idx = jax.tree_util.tree_map(lambda a: a[i], comp)
        fn = capturing if i in steps else plain
        x, state, got = fn(params, x, state, jnp.int32(i), sched.timesteps[i], idx, *text, guidance)
        if i in steps:
            _check_captured(got, sites)
            probs.update({(i, s.name): np.asarray(got[s.name], np.float32) for s in sites})
    return probs


def _check_captured(got: Mapping[str, jax.Array], sites):
    for s in sites:
        want = (len(s.queries), s.grid[0] * s.grid[1])
        if s.name not in got or tuple(got[s.name].shape[-2:]) != want:
            shape = None if s.name not in got else tuple(got[s.name].shape)
            raise RuntimeError(
                f"capture of {s.name}: expected probs (B, H, {want[0]}, {want[1]}), got {shape}; the "
                "UNet's module tree and analysis.self_attention_sites disagree."
            )
