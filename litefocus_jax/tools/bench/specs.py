"""What one benchmark measurement is: the model geometry, the implementations under test, the shared inputs,
and the plan (one spec dict per measurement) that the runners execute."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math

import numpy as np

from litefocus_jax.models.presets import (
    AUDIOLDM2_VAE,
    AUDIOLDM2_VOCODER,
    TINY_VAE,
    TINY_VOCODER,
)

SCHEMA = "litefocus-jax-bench/1"
SCOPES = ("attention", "unet", "e2e")
SCHEDULERS = ("ddim", "dpmsolver++")
DEFAULT_SECONDS = (10.24, 20.0, 40.0, 80.0, 160.0, 320.0)
DEFAULT_STEPS = ("ddim:200", "dpmsolver++:25")
QUICK_DEFAULTS = dict(seconds=[0.64], repeats=1, e2e_repeats=1, steps=["ddim:2", "dpmsolver++:2"], model="tiny", isolation="none")
STATUSES = ("ok", "oom", "timeout", "error", "skipped")
BATCH = 2  # one prompt with classifier-free guidance
T5_TOKENS = 12
TIMESTEP = 501
GUIDANCE = 3.5
RATIO = 0.1  # LiteFocus compensation fraction (the paper's and released default)
MEL_LATENT_BINS = 16  # 64 mel bins / VAE scale factor 4, for every model here
SECONDS_PER_MEL_FRAME = 0.01  # vocoder hop 160 at 16 kHz
VAE_SCALE = 4

# The --quick model: a two-level UNet (level 1 is the LiteFocus level, as in the real one; compiles in
# seconds) and the VAE and vocoder of `litefocus_jax.pipelines.audioldm2.tiny.build_tiny_pipeline`.
TINY = dict(
    unet=dict(
        _class_name="AudioLDM2UNet2DConditionModel",
        sample_size=64,
        in_channels=8,
        out_channels=8,
        block_out_channels=[16, 32],
        layers_per_block=1,
        attention_head_dim=2,
        norm_num_groups=8,
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        cross_attention_dim=[[None, 16, 24]] * 2,
        transformer_layers_per_block=1,
    ),
    vae=dict(TINY_VAE),
    vocoder=dict(TINY_VOCODER),
)
MODELS = ("audioldm2", "audioldm2-large", "audioldm2-music", "tiny")


def model_configs(model: str) -> dict:
    """{"unet", "vae", "vocoder"}: diffusers/transformers config dicts of a named model geometry."""
    from litefocus_jax.models.presets import unet_config

    if model == "tiny":
        return json.loads(json.dumps(TINY))
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {MODELS}.")
    return dict(unet=unet_config(model), vae=dict(AUDIOLDM2_VAE), vocoder=dict(AUDIOLDM2_VOCODER))


def latent_frames(seconds: float) -> int:
    """Latent time frames for `seconds` of audio, rounded up as diffusers (and the pipeline) do."""
    height = int(seconds / SECONDS_PER_MEL_FRAME)
    return math.ceil(height / VAE_SCALE)


def geometry(model: str, seconds: float) -> dict:
    """Shapes of one measurement: latent frames, level-1 grid (T, F), tokens N, compensation K, heads, head dim."""
    from litefocus_jax.litefocus.plan import LiteFocusConfig, make_plan
    from litefocus_jax.models.unet_audioldm2 import UNetConfig

    cfg = UNetConfig.from_diffusers(model_configs(model)["unet"])
    frames = latent_frames(seconds)
    plan = make_plan(cfg, LiteFocusConfig(ratio=RATIO), (frames, MEL_LATENT_BINS))
    level = plan.levels[0]
    dims = cfg.cross_attention_dims[1]
    return dict(
        latent_frames=frames,
        level1_time=level.time,
        level1_freq=level.freq_bins,
        level1_tokens=level.time * level.freq_bins,
        comp_tokens=level.comp_tokens,
        heads=cfg.heads[1],
        head_dim=cfg.block_out_channels[1] // cfg.heads[1],
        sparse_calls=plan.num_calls,
        gpt2_dim=dims[1],
        t5_dim=dims[2] if len(dims) > 2 else None,
    )


@dataclasses.dataclass(frozen=True)
class Impl:
    """One implementation under test.

    framework: "jax" or "torch". attention: "dense" or "litefocus". duplicates: the LiteFocus duplicate mode
    ("official" = the released semantics, "exact"), None for dense. kernel: for JAX the `implementation`
    string given to `init_unet(attention_implementation=...)` / `dot_product_attention(implementation=...)`
    (None = JAX chooses); for torch "sdpa" (`scaled_dot_product_attention`).
    """

    framework: str
    attention: str
    duplicates: str | None
    kernel: str | None

    @property
    def id(self) -> str:
        name = self.attention if self.duplicates is None else f"{self.attention}-{self.duplicates}"
        return f"{self.framework}-{name}:{self.kernel or 'default'}"


def default_jax_impls(backend: str) -> list[str]:
    """The JAX attention kernels timed by default on a backend: on CPU the library default (None: chunked
    self-attention, see `attention.dot_product_attention`); on GPU one-shot XLA and cuDNN."""
    return {"gpu": ["xla", "cudnn"]}.get(backend, [None])


def implementations(jax_kernels, with_torch: bool) -> list[Impl]:
    impls = []
    for kernel in jax_kernels:
        impls += [
            Impl("jax", "dense", None, kernel),
            Impl("jax", "litefocus", "official", kernel),
            Impl("jax", "litefocus", "exact", kernel),
        ]
    if with_torch:
        impls += [Impl("torch", "dense", None, "sdpa"), Impl("torch", "litefocus", "official", "sdpa")]
    return impls


def attention_inputs(g: dict, seed: int):
    """q, k, v float32 (B, N, H, D) and the compensation index int32 (K,), identical in every process."""
    rng = np.random.default_rng(seed)
    shape = (BATCH, g["level1_tokens"], g["heads"], g["head_dim"])
    q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    return q, k, v, rng.permutation(g["level1_tokens"])[: g["comp_tokens"]].astype(np.int32)


def text_states(g: dict, seed: int):
    """Random GPT2 states (2, 8, D), Flan-T5 states (2, L, D1) and an all-ones T5 mask (2, L): the
    [unconditional; conditional] text conditioning of one prompt, at the model's conditioning widths."""
    rng = np.random.default_rng(seed + 1)
    gpt2 = rng.standard_normal((BATCH, 8, g["gpt2_dim"]), dtype=np.float32)
    t5 = rng.standard_normal((BATCH, T5_TOKENS, g["t5_dim"]), dtype=np.float32)
    return gpt2, t5, np.ones((BATCH, T5_TOKENS), np.int32)


def measurement_spec(scope: str, seconds: float, impl: Impl, cfg: dict, scheduler=None, steps=None, g=None) -> dict:
    """One measurement: what a runner needs (scope, length, implementation, geometry, dtype, seed, repeats, backend,
    torch threads), `cfg` giving model, dtype, seed, repeats/e2e_repeats, backend and threads."""
    return dict(
        scope=scope,
        seconds=seconds,
        impl=dataclasses.asdict(impl),
        id=impl.id,
        scheduler=scheduler,
        steps=steps,
        geometry=g or geometry(cfg["model"], seconds),
        model=cfg["model"],
        dtype=cfg["dtype"],
        seed=cfg["seed"],
        repeats=cfg["e2e_repeats"] if scope == "e2e" else cfg["repeats"],
        backend=cfg["backend"],
        threads=cfg["threads"],
    )


def plan_measurements(cfg: dict) -> list[dict]:
    """Every measurement spec, shortest lengths first so that a long run has results early."""
    impls = implementations(cfg["jax_impls"], cfg["torch"]["enabled"])
    if cfg["only"]:
        impls = [i for i in impls if any(fnmatch.fnmatchcase(i.id, pattern) for pattern in cfg["only"])]
    specs = []
    for scope in cfg["scopes"]:
        lengths = cfg["e2e_seconds"] if scope == "e2e" else cfg["seconds"]
        runs = cfg["steps"] if scope == "e2e" else [(None, None)]
        for seconds in lengths:
            g = geometry(cfg["model"], seconds)
            for scheduler, steps in runs:
                specs += [measurement_spec(scope, seconds, impl, cfg, scheduler, steps, g) for impl in impls]
    return specs
