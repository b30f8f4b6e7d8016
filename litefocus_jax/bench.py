"""Benchmark harness: JAX dense and LiteFocus attention against the PyTorch/diffusers peers, at the real
AudioLDM2 geometry with random weights, over audio lengths.

    litefocus-jax bench [--scopes attention unet e2e] [--seconds 10.24 20 40 80 160 320] [--quick] ...
    python benchmarks/run_benchmarks.py ...      (the same, from a checkout)

Three scopes, each timed per audio length and implementation:
  attention  one level-1 self-attention call: q, k, v (B=2, N, H, D), N = (T0/2) * 8 level-1 tokens;
  unet       one UNet call, batch 2 (one prompt with classifier-free guidance);
  e2e        the jitted denoising loop (lax.scan over the steps, real-size UNet) plus VAE decode and vocoder;
             text encoding is not timed (random text states of the real shapes stand in for it).
Implementations: JAX dense and LiteFocus (official and exact duplicate modes) per `--jax-impls` kernel,
and the PyTorch peers: torch SDPA dense / the released LiteFocus algorithm in row form over SDPA (the
diffusers UNet with those processors in the unet and e2e scopes).

Every measurement runs in a fresh subprocess (`--isolation subprocess`, the default), so peak RSS is its
own, memory is freed between long runs, and an out-of-memory or `--timeout` is recorded as a status,
never a crash. Results: bench.json (machine, versions, configuration, every measurement), bench.md (one
table per scope) and bench.png (time against length, log-log), written atomically to --out-dir
(default benchmarks/results/<device tag>/). Random weights: timings only, no audio meaning.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from litefocus_jax.cli import _positive_float, _positive_int, _seed
from litefocus_jax.presets import AUDIOLDM2_VAE, AUDIOLDM2_VOCODER, TINY_VAE, TINY_VOCODER
from litefocus_jax.schedulers import CVSSP_DDIM
from litefocus_jax.torch_reference import INSTALL_HINT

SCHEMA = "litefocus-jax-bench/1"
SCOPES = ("attention", "unet", "e2e")
SCHEDULERS = ("ddim", "dpmsolver++")
DEFAULT_SECONDS = (10.24, 20.0, 40.0, 80.0, 160.0, 320.0)
DEFAULT_STEPS = ("ddim:200", "dpmsolver++:25")
QUICK_DEFAULTS = dict(seconds=[0.64], repeats=1, e2e_repeats=1, steps=["ddim:2", "dpmsolver++:2"], model="tiny",
                      isolation="none")
STATUSES = ("ok", "oom", "timeout", "error", "skipped")
BATCH = 2  # one prompt with classifier-free guidance
T5_TOKENS = 12
TIMESTEP = 501
GUIDANCE = 3.5
RATIO = 0.1  # LiteFocus compensation fraction (the paper's and released default)
MEL_LATENT_BINS = 16  # 64 mel bins / VAE scale factor 4, for every model here
SECONDS_PER_MEL_FRAME = 0.01  # vocoder hop 160 at 16 kHz
VAE_SCALE = 4
RESULT_MARKER = "LITEFOCUS_BENCH_RESULT "
TORCH_PACKAGES = ("torch", "diffusers", "transformers")
VERSION_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "torch", "diffusers", "transformers", "litefocus-jax")

# The --quick model: a two-level UNet (level 1 is the LiteFocus level, as in the real one; compiles in
# seconds) and the VAE and vocoder of `litefocus_jax.cli.build_tiny_pipeline`.
TINY = dict(
    unet=dict(_class_name="AudioLDM2UNet2DConditionModel", sample_size=64, in_channels=8, out_channels=8,
              block_out_channels=[16, 32], layers_per_block=1, attention_head_dim=2, norm_num_groups=8,
              down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
              cross_attention_dim=[[None, 16, 24]] * 2, transformer_layers_per_block=1),
    vae=dict(TINY_VAE),
    vocoder=dict(TINY_VOCODER),
)
MODELS = ("audioldm2", "audioldm2-large", "audioldm2-music", "tiny")


def model_configs(model: str) -> dict:
    """{"unet", "vae", "vocoder"}: diffusers/transformers config dicts of a named model geometry."""
    from litefocus_jax.presets import unet_config

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
    from litefocus_jax.litefocus import LiteFocusConfig, make_plan
    from litefocus_jax.models.unet_audioldm2 import UNetConfig

    cfg = UNetConfig.from_diffusers(model_configs(model)["unet"])
    frames = latent_frames(seconds)
    plan = make_plan(cfg, LiteFocusConfig(ratio=RATIO), (frames, MEL_LATENT_BINS))
    level = plan.levels[0]
    dims = cfg.cross_attention_dims[1]
    return dict(latent_frames=frames, level1_time=level.time, level1_freq=level.freq_bins,
                level1_tokens=level.time * level.freq_bins, comp_tokens=level.comp_tokens, heads=cfg.heads[1],
                head_dim=cfg.block_out_channels[1] // cfg.heads[1], sparse_calls=plan.num_calls,
                gpt2_dim=dims[1], t5_dim=dims[2] if len(dims) > 2 else None)


# ------------------------------------------------------------------------------------------ implementations


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
        impls += [Impl("jax", "dense", None, kernel), Impl("jax", "litefocus", "official", kernel),
                  Impl("jax", "litefocus", "exact", kernel)]
    if with_torch:
        impls += [Impl("torch", "dense", None, "sdpa"), Impl("torch", "litefocus", "official", "sdpa")]
    return impls


# ------------------------------------------------------------------------------------------ timing helpers


def timed_runs(call, repeats: int, sync=lambda x: x):
    """Run `call()` once (warm-up, timed apart), then `repeats` times. -> (first output, first_s, [run_s])."""
    start = time.perf_counter()
    out = sync(call())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(call())
        runs.append(time.perf_counter() - start)
    return out, first, runs


def _timing(first, runs) -> dict:
    return dict(first_run_s=first, run_s=statistics.median(runs), runs_s=runs)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _current_rss_bytes() -> int | None:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _save_output(spec: dict, array) -> None:
    if spec.get("output"):
        np.save(spec["output"], np.asarray(array, np.float32))


# ------------------------------------------------------------------------------------------ JAX workers


def _compile(jitted, *args) -> tuple:
    """AOT lower + compile, timed apart from any run. -> (executable, lower_s, compile_s)."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    mid = time.perf_counter()
    compiled = lowered.compile()
    return compiled, mid - start, time.perf_counter() - mid


def _memory_analysis(compiled) -> dict | None:
    """The executable's own buffer sizes (deterministic): arguments, outputs, temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    out = {name: int(getattr(m, f"{name}_size_in_bytes", 0)) for name in ("argument", "output", "temp", "alias", "generated_code")}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def _jax_device_peak():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _staged(stages, sync):
    """Chain `stages` [(name, fn)], every fn taking the previous output (None for the first), timing each.

    -> (call, log): call() runs them all and returns the last output; log collects one [seconds per stage]
    list per call.
    """
    log = []

    def call():
        out, times = None, []
        for _, fn in stages:
            start = time.perf_counter()
            out = sync(fn(out))
            times.append(time.perf_counter() - start)
        log.append(times)
        return out

    return call, log


def _stage_medians(stages, log) -> dict | None:
    """{stage name: median seconds over the timed runs (the warm-up excluded)}; None for a single stage."""
    if len(stages) < 2:
        return None
    return {name: statistics.median(times[i] for times in log[1:]) for i, (name, _) in enumerate(stages)}


def _jax_run(stages, spec: dict) -> dict:
    """Compile each (name, jitted, args) stage ahead of time, then time them chained: every stage after the
    first takes the previous stage's output as its last argument.

    One stage for the attention and UNet scopes; denoise then decode for e2e. -> timing and memory dict.
    """
    import jax

    compiled, lower_s, compile_s, previous = [], 0.0, 0.0, ()
    for name, jitted, args in stages:
        exe, lo, co = _compile(jitted, *args, *previous)
        previous = (exe.out_info,)
        compiled.append((name, exe, args))
        lower_s, compile_s = lower_s + lo, compile_s + co

    chain = [(name, lambda prev, exe=exe, args=args: exe(*args, *(() if prev is None else (prev,))))
             for name, exe, args in compiled]
    call, log = _staged(chain, jax.block_until_ready)
    out, first, runs = timed_runs(call, spec["repeats"])
    _save_output(spec, out)
    analyses = [_memory_analysis(exe) for _, exe, _ in compiled]
    xla = analyses[0] if len(analyses) == 1 else dict(stages=analyses, total=max((a or {}).get("total", 0) for a in analyses))
    return dict(lower_s=lower_s, compile_s=compile_s, **_timing(first, runs), stage_run_s=_stage_medians(chain, log),
                memory=dict(xla=xla, device_peak_bytes=_jax_device_peak()))


def attention_inputs(g: dict, seed: int):
    """q, k, v float32 (B, N, H, D) and the compensation index int32 (K,), identical in every process."""
    rng = np.random.default_rng(seed)
    shape = (BATCH, g["level1_tokens"], g["heads"], g["head_dim"])
    q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    return q, k, v, rng.permutation(g["level1_tokens"])[: g["comp_tokens"]].astype(np.int32)


def _jax_attention(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from litefocus_jax.attention import dot_product_attention, litefocus_attention

    impl, g = Impl(**spec["impl"]), spec["geometry"]
    q, k, v, idx = attention_inputs(g, spec["seed"])
    args = [jnp.asarray(x, jnp.dtype(spec["dtype"])) for x in (q, k, v)]
    if impl.attention == "dense":
        fn = lambda q, k, v: dot_product_attention(q, k, v, implementation=impl.kernel)  # noqa: E731
    else:
        args.append(jnp.asarray(idx))
        fn = lambda q, k, v, i: litefocus_attention(  # noqa: E731
            q, k, v, freq_bins=g["level1_freq"], comp_index=i, duplicates=impl.duplicates, implementation=impl.kernel)
    return _jax_run([("attention", jax.jit(fn), args)], spec)


def _litefocus_config(impl: Impl, seed: int):
    from litefocus_jax.litefocus import LiteFocusConfig

    return None if impl.attention == "dense" else LiteFocusConfig(ratio=RATIO, duplicates=impl.duplicates, seed=seed)


def text_states(g: dict, seed: int):
    """Random GPT2 states (2, 8, D), Flan-T5 states (2, L, D1) and an all-ones T5 mask (2, L): the
    [unconditional; conditional] text conditioning of one prompt, at the model's conditioning widths."""
    rng = np.random.default_rng(seed + 1)
    gpt2 = rng.standard_normal((BATCH, 8, g["gpt2_dim"]), dtype=np.float32)
    t5 = rng.standard_normal((BATCH, T5_TOKENS, g["t5_dim"]), dtype=np.float32)
    return gpt2, t5, np.ones((BATCH, T5_TOKENS), np.int32)


def _jax_unet(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from litefocus_jax.litefocus import indices_for_step, make_comp_indices, make_plan
    from litefocus_jax.loading import init_unet

    impl, g, dtype = Impl(**spec["impl"]), spec["geometry"], jnp.dtype(spec["dtype"])
    unet = init_unet(model_configs(spec["model"])["unet"], seed=spec["seed"], dtype=dtype,
                     attention_implementation=impl.kernel)
    apply, params = unet.functional()
    lf = _litefocus_config(impl, spec["seed"])
    sample = np.random.default_rng(spec["seed"]).standard_normal((BATCH, g["latent_frames"], MEL_LATENT_BINS, 8), dtype=np.float32)
    gpt2, t5, mask = text_states(g, spec["seed"])
    comp = None
    if lf is not None:
        comp = indices_for_step(make_comp_indices(make_plan(unet.config, lf, sample.shape), 1), 0)

    def call(p, x, gpt2, t5, mask, comp):
        return apply(p, x, TIMESTEP, gpt2, t5, None, mask, comp_indices=comp, litefocus=lf)

    args = [params, *(jnp.asarray(a, dtype) for a in (sample, gpt2, t5)), jnp.asarray(mask), comp]
    return _jax_run([("unet", jax.jit(call), args)], spec)


def build_e2e_pipeline(model: str, dtype, kernel, scheduler: str, seed: int = 0):
    """An AudioLDM2Pipeline with the named model's UNet, VAE and vocoder (random weights) and the tiny text
    stack of `cli.build_tiny_pipeline` (never run by the benchmark: text states are given directly)."""
    from flax import nnx

    from litefocus_jax.cli import build_tiny_pipeline
    from litefocus_jax.loading import init_unet
    from litefocus_jax.models.autoencoder_kl import init_vae
    from litefocus_jax.models.hifigan import init_vocoder
    from litefocus_jax.pipeline_audioldm2 import AudioLDM2Pipeline

    tiny = build_tiny_pipeline(seed, dtype)
    text = {name: nnx.merge(*tiny.modules[name])
            for name in ("text_encoder", "text_encoder_2", "projection_model", "language_model")}
    cfgs = model_configs(model)
    return AudioLDM2Pipeline(
        tokenizer=tiny.tokenizer, tokenizer_2=tiny.tokenizer_2, **text,
        unet=init_unet(cfgs["unet"], seed=seed, dtype=dtype, attention_implementation=kernel),
        vae=init_vae(cfgs["vae"], seed=seed, dtype=dtype, with_encoder=False),
        vocoder=init_vocoder(cfgs["vocoder"], seed=seed, dtype=dtype),
        scheduler_config=dict(CVSSP_DDIM), scheduler=scheduler, dtype=dtype)


def _jax_e2e(spec: dict) -> dict:
    """The pipeline's own jitted stages: the denoising lax.scan (`_denoise_fn`), then VAE + vocoder (`_decode_fn`)."""
    import jax
    import jax.numpy as jnp

    impl, g, dtype = Impl(**spec["impl"]), spec["geometry"], jnp.dtype(spec["dtype"])
    pipe = build_e2e_pipeline(spec["model"], dtype, impl.kernel, spec["scheduler"], spec["seed"])
    shape = (1, g["latent_frames"], MEL_LATENT_BINS, 8)
    litefocus, comp = pipe._comp_schedule(_litefocus_config(impl, spec["seed"]), shape[1:], spec["steps"])
    latents = np.random.default_rng(spec["seed"]).standard_normal(shape, dtype=np.float32)
    gpt2, t5, mask = text_states(g, spec["seed"])
    keys = jax.random.PRNGKey(spec["seed"])[None]
    denoise_args = [pipe.modules["unet"][1], jnp.asarray(latents, dtype), jnp.asarray(t5, dtype), jnp.asarray(mask),
                    jnp.asarray(gpt2, dtype), jnp.asarray(GUIDANCE, jnp.float32), comp, keys]
    stages = [("denoise", pipe._denoise_fn(spec["steps"], True, litefocus, 0.0), denoise_args),
              ("decode", pipe._decode_fn(), [pipe._params("vae", "vocoder")])]
    return _jax_run(stages, spec)


# ------------------------------------------------------------------------------------------ torch workers


def _torch_setup(spec: dict):
    """-> (torch, device, dtype) with torch's intra-op threads set to XLA's CPU count."""
    from litefocus_jax.torch_reference import require_torch

    torch, _, _ = require_torch()
    torch.set_num_threads(spec["threads"])
    device = "cpu"
    if spec["backend"] == "gpu":
        if not torch.cuda.is_available():
            raise RuntimeError("the JAX backend is a GPU but this torch has no CUDA; install a CUDA torch or use --no-torch.")
        device = "cuda"
        torch.cuda.reset_peak_memory_stats()
    return torch, device, getattr(torch, spec["dtype"])


def _torch_run(torch, device, stages, spec: dict) -> dict:
    """Time the chained (name, fn(previous output)) stages eagerly: no compile step."""
    sync = (lambda x: (torch.cuda.synchronize(), x)[1]) if device == "cuda" else (lambda x: x)
    call, log = _staged(stages, sync)
    with torch.inference_mode():
        out, first, runs = timed_runs(call, spec["repeats"])
    _save_output(spec, out.float().cpu().numpy())
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return dict(compile_s=None, **_timing(first, runs), stage_run_s=_stage_medians(stages, log),
                memory=dict(device_peak_bytes=peak))


def _torch_attention(spec: dict) -> dict:
    from litefocus_jax.torch_reference import released_litefocus_sdpa

    torch, device, dtype = _torch_setup(spec)
    impl, g = Impl(**spec["impl"]), spec["geometry"]
    q, k, v, idx = attention_inputs(g, spec["seed"])
    q, k, v = (torch.from_numpy(x.transpose(0, 2, 1, 3).copy()).to(device, dtype) for x in (q, k, v))  # (B, H, N, D)
    idx = torch.from_numpy(idx.astype(np.int64)).to(device)
    if impl.attention == "dense":
        call = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)  # noqa: E731
    else:
        call = lambda: released_litefocus_sdpa(q, k, v, idx, g["level1_freq"])  # noqa: E731
    return _torch_run(torch, device, [("attention", lambda _: call().transpose(1, 2))], spec)


def _torch_unet_model(spec: dict, torch, device, dtype):
    """The diffusers UNet at the model geometry; LiteFocus levels get the released algorithm over SDPA with
    the released index draw (a fresh randperm at every call)."""
    from litefocus_jax import torch_reference as tr

    impl, g = Impl(**spec["impl"]), spec["geometry"]
    unet = tr.build_unet(model_configs(spec["model"])["unet"], seed=spec["seed"], device=device, dtype=dtype)
    if impl.attention == "litefocus":
        provider = tr.randperm_provider(g["level1_tokens"], g["comp_tokens"], device)
        tr.install_released_litefocus(unet, {"1": provider}, {"1": g["level1_freq"]}, kernel="sdpa")
    return unet


def _torch_text(spec: dict, torch, device, dtype):
    gpt2, t5, mask = text_states(spec["geometry"], spec["seed"])
    return (torch.from_numpy(gpt2).to(device, dtype), torch.from_numpy(t5).to(device, dtype),
            torch.from_numpy(mask.astype(np.int64)).to(device))


def _torch_unet(spec: dict) -> dict:
    torch, device, dtype = _torch_setup(spec)
    unet = _torch_unet_model(spec, torch, device, dtype)
    shape = (BATCH, spec["geometry"]["latent_frames"], MEL_LATENT_BINS, 8)
    x = np.random.default_rng(spec["seed"]).standard_normal(shape, dtype=np.float32)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device, dtype)  # NCHW (B, C, T, F)
    gpt2, t5, mask = _torch_text(spec, torch, device, dtype)

    def call(_):
        return unet(x, TIMESTEP, encoder_hidden_states=gpt2, encoder_hidden_states_1=t5,
                    encoder_attention_mask_1=mask).sample.permute(0, 2, 3, 1)

    return _torch_run(torch, device, [("unet", call)], spec)


def _torch_e2e(spec: dict) -> dict:
    from litefocus_jax import torch_reference as tr

    torch, device, dtype = _torch_setup(spec)
    cfgs, seed = model_configs(spec["model"]), spec["seed"]
    unet = _torch_unet_model(spec, torch, device, dtype)
    vae = tr.build_vae(cfgs["vae"], seed=seed, device=device, dtype=dtype)
    vocoder = tr.build_vocoder(cfgs["vocoder"], seed=seed, device=device, dtype=dtype)
    scheduler = tr.make_scheduler(spec["scheduler"], CVSSP_DDIM)
    shape = (1, spec["geometry"]["latent_frames"], MEL_LATENT_BINS, 8)
    latents = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    latents = torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()).to(device, dtype)
    gpt2, t5, mask = _torch_text(spec, torch, device, dtype)

    stages = [("denoise", lambda _: tr.denoise(unet, scheduler, spec["steps"], latents, gpt2, t5, mask, GUIDANCE)),
              ("decode", lambda x: tr.decode(vae, vocoder, x))]
    return _torch_run(torch, device, stages, spec)


WORKERS = {("jax", "attention"): _jax_attention, ("jax", "unet"): _jax_unet, ("jax", "e2e"): _jax_e2e,
           ("torch", "attention"): _torch_attention, ("torch", "unet"): _torch_unet, ("torch", "e2e"): _torch_e2e}


def measure(spec: dict) -> dict:
    """Run one measurement in this process. -> the worker's dict plus setup time and RSS figures.

    setup_s is everything before the timed runs that is not compilation (model build, inputs). RSS is only
    meaningful when this process does nothing else (spec["isolated"]).
    """
    rss_start = _current_rss_bytes()
    start = time.perf_counter()
    result = WORKERS[(spec["impl"]["framework"], spec["scope"])](spec)
    total = time.perf_counter() - start
    result["setup_s"] = total - (result.get("lower_s") or 0) - (result.get("compile_s") or 0) - result["first_run_s"] - sum(result["runs_s"])
    peak = _peak_rss_bytes()
    if spec.get("isolated"):
        result["memory"].update(rss_start_bytes=rss_start, peak_rss_bytes=peak,
                                peak_rss_delta_bytes=None if rss_start is None else peak - rss_start)
    else:
        result["memory"].update(rss_start_bytes=None, peak_rss_bytes=None, peak_rss_delta_bytes=None)
    return result


# ------------------------------------------------------------------------------------------ environment


def _versions() -> dict:
    import litefocus_jax

    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["litefocus-jax"] = out["litefocus-jax"] or litefocus_jax.__version__
    out.update(_git_revision(Path(litefocus_jax.__file__).resolve().parents[1]))
    return out


def _git_revision(root: Path) -> dict:
    """The checkout's commit and whether it had uncommitted changes (None outside a git checkout)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return dict(git_commit=None, git_dirty=None)
    if head.returncode:
        return dict(git_commit=None, git_dirty=None)
    return dict(git_commit=head.stdout.strip(), git_dirty=bool(dirty.stdout.strip()))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def cpu_threads() -> int:
    """CPUs this process may run on: XLA's CPU thread pool size, and what torch gets."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict:
    return dict(hostname=socket.gethostname(), platform=platform.platform(), cpu_model=_cpu_model(),
                cpu_count=os.cpu_count(), cpu_affinity=cpu_threads(), ram_bytes=_ram_bytes())


def device_info() -> dict:
    """The JAX backend and its first device (initialises the backend: call it in a worker, not the parent)."""
    import jax

    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    return dict(backend=jax.default_backend(), device_kind=dev.device_kind, device_count=jax.device_count(),
                memory_bytes=stats.get("bytes_limit"))


def torch_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in TORCH_PACKAGES)


def device_tag(machine: dict, device: dict) -> str:
    """A folder name for the results: cpu-<model>-<n>c, or <backend>-<device kind>."""
    if device["backend"] == "cpu":
        name = f"cpu-{machine['cpu_model']}-{machine['cpu_affinity']}c"
    else:
        name = f"{device['backend']}-{device['device_kind']}"
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-")


# ------------------------------------------------------------------------------------------ running one measurement


def _failure_status(text: str) -> str:
    oom = ("RESOURCE_EXHAUSTED", "out of memory", "MemoryError", "bad_alloc", "OutOfMemoryError", "Cannot allocate memory")
    return "oom" if any(s.lower() in text.lower() for s in oom) else "error"


def _tail(text: str, chars: int = 1500) -> str:
    return text[-chars:].strip()


def _worker_command() -> list[str]:
    return [sys.executable, "-m", "litefocus_jax.bench", "--worker"]


def _worker_env() -> dict:
    """The parent's environment, with this package importable even from an uninstalled checkout."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_isolated(spec: dict, timeout: float) -> dict:
    """Run `measure(spec)` in a fresh Python process. -> its dict, or {"status", "reason"} on failure."""
    try:
        proc = subprocess.run(_worker_command(), input=json.dumps(spec), capture_output=True, text=True,
                              timeout=timeout, env=_worker_env())
    except subprocess.TimeoutExpired:
        return dict(status="timeout", reason=f"exceeded --timeout {timeout:g} s (killed)")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    if proc.returncode == -9:
        return dict(status="oom", reason="killed by SIGKILL (most likely the kernel's OOM killer)")
    return dict(status=_failure_status(proc.stderr), reason=f"worker exit status {proc.returncode}: {_tail(proc.stderr)}")


def run_in_process(spec: dict) -> dict:
    try:
        return dict(status="ok", **measure(spec))
    except Exception as e:  # noqa: BLE001 - a failed measurement is a result, not a harness crash
        text = f"{type(e).__name__}: {e}"
        return dict(status=_failure_status(text), reason=_tail(text))


def worker_main() -> int:
    """`--worker`: read one spec (JSON) on stdin, print one marked JSON result line on stdout."""
    spec = json.loads(sys.stdin.read())
    limit = spec.get("memory_limit_bytes")
    if limit:  # an allocation past it fails (and is recorded as oom) instead of waking the kernel's OOM killer
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = probe() if spec.get("probe") else run_in_process(spec)
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


def probe() -> dict:
    return dict(status="ok", device=device_info(), versions=_versions())


# ------------------------------------------------------------------------------------------ the plan


def parse_steps(text: str) -> tuple[str, int]:
    """"ddim:200" -> ("ddim", 200)."""
    name, _, count = text.partition(":")
    if name not in SCHEDULERS or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: use SCHEDULER:STEPS with SCHEDULER in {SCHEDULERS}, e.g. ddim:200.")
    return name, int(count)


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0.32:
        raise argparse.ArgumentTypeError(f"{text!r}: audio lengths must be >= 0.32 s (LiteFocus needs compensation tokens).")
    return value


def _kernel(text: str) -> str | None:
    return None if text.lower() in ("default", "none") else text


def plan_measurements(cfg: dict) -> list[dict]:
    """Every measurement spec, shortest lengths first so that a long run has results early."""
    impls = implementations(cfg["jax_impls"], cfg["torch"]["enabled"])
    if cfg["only"]:
        impls = [i for i in impls if any(fnmatch.fnmatchcase(i.id, pattern) for pattern in cfg["only"])]
    specs = []
    for scope in cfg["scopes"]:
        lengths = cfg["e2e_seconds"] if scope == "e2e" else cfg["seconds"]
        runs = [dict(scheduler=s, steps=n) for s, n in cfg["steps"]] if scope == "e2e" else [dict(scheduler=None, steps=None)]
        for seconds in lengths:
            g = geometry(cfg["model"], seconds)
            for run in runs:
                for impl in impls:
                    specs.append(dict(scope=scope, seconds=seconds, impl=dataclasses.asdict(impl), id=impl.id, **run,
                                      geometry=g, model=cfg["model"], dtype=cfg["dtype"], seed=cfg["seed"],
                                      repeats=cfg["e2e_repeats"] if scope == "e2e" else cfg["repeats"],
                                      backend=cfg["backend"], threads=cfg["threads"]))
    return specs


def _skip_reason(spec: dict, cfg: dict, failed: dict) -> str | None:
    impl = Impl(**spec["impl"])
    if impl.framework == "jax" and impl.kernel == "cudnn" and cfg["dtype"] == "float32":
        return "cuDNN attention needs float16/bfloat16; run with --dtype bfloat16"
    earlier = failed.get(_series(spec))
    if earlier is not None and spec["seconds"] > earlier[0]:
        return f"{earlier[1]} at {earlier[0]:g} s"
    return None


def _series(m: dict) -> tuple:
    return (m["scope"], m.get("scheduler"), m.get("steps"), m["id"])


def run_one(spec: dict, cfg: dict, failed: dict, output: Path) -> dict:
    """Run (or skip) one measurement, its output array saved to `output` (.npy); an OOM or timeout is also
    recorded in `failed`, so that longer lengths of the same series are skipped."""
    reason = _skip_reason(spec, cfg, failed)
    if reason:
        return dict(status="skipped", reason=reason)
    spec = dict(spec, output=str(output), isolated=cfg["isolation"] == "subprocess")
    start = time.perf_counter()
    if cfg["isolation"] == "subprocess":
        result = run_isolated(dict(spec, memory_limit_bytes=cfg["memory_limit_bytes"]), cfg["timeout_s"])
    else:
        result = run_in_process(spec)
    result["wall_s"] = time.perf_counter() - start
    if result["status"] in ("oom", "timeout"):
        failed.setdefault(_series(spec), (spec["seconds"], result["status"]))
    if result["status"] == "ok":
        result["_output"] = spec["output"]
    return result


def _record(spec: dict, result: dict) -> dict:
    keep = ("id", "scope", "seconds", "scheduler", "steps", "impl", "geometry", "dtype", "repeats")
    return {**{k: spec[k] for k in keep}, "reason": None, **result}


# ------------------------------------------------------------------------------------------ agreement


def _comparable(m: dict, ref: dict) -> bool:
    """Outputs are comparable when inputs and weights are identical: same framework (same seeded weights),
    or any framework in the attention scope (identical q, k, v and index)."""
    return m["scope"] == "attention" or m["impl"]["framework"] == ref["impl"]["framework"]


def _same_algorithm(m: dict, ref: dict) -> bool:
    return (m["impl"]["attention"], m["impl"]["duplicates"]) == (ref["impl"]["attention"], ref["impl"]["duplicates"])


def _reference(m: dict, group: list[dict], same: bool) -> dict | None:
    """same: the same algorithm in a comparable run, the torch peer first (independent code). Otherwise (a
    LiteFocus output against dense): the first dense run of the same framework."""
    if same:
        want = [r for r in group if r is not m and _comparable(m, r) and _same_algorithm(m, r)]
        want.sort(key=lambda r: r["impl"]["framework"] != "torch")
    else:
        want = [r for r in group if r["impl"]["framework"] == m["impl"]["framework"] and r["impl"]["attention"] == "dense"]
    return want[0] if want else None


def _difference(a_path: str, b_path: str) -> tuple[float, float]:
    a, b = np.load(a_path).astype(np.float64), np.load(b_path).astype(np.float64)
    diff = a - b
    return float(np.abs(diff).max()), float(np.linalg.norm(diff) / max(np.linalg.norm(b), 1e-30))


def agreement(results: list[dict]) -> list[dict]:
    """Output differences between implementations run on identical inputs.

    expected "equal": the same algorithm (e.g. JAX LiteFocus official vs the released algorithm in torch
    on the same q, k, v and index; JAX dense vs torch SDPA): only rounding. expected "differs": LiteFocus
    vs dense, the size of the sparse approximation (random weights: no quality meaning).
    """
    groups: dict[tuple, list] = {}
    for m in results:
        if m["status"] == "ok" and m.get("_output"):
            groups.setdefault((m["scope"], m["seconds"], m["scheduler"], m["steps"]), []).append(m)
    out, seen = [], set()
    for group in groups.values():
        for m in group:
            for same in (True, False):
                if not same and m["impl"]["attention"] == "dense":
                    continue
                ref = _reference(m, group, same)
                if ref is not None and frozenset((id(m), id(ref))) not in seen:
                    seen.add(frozenset((id(m), id(ref))))
                    err, rel = _difference(m["_output"], ref["_output"])
                    out.append(dict(scope=m["scope"], seconds=m["seconds"], scheduler=m["scheduler"], steps=m["steps"],
                                    impl=m["id"], reference=ref["id"], expected="equal" if same else "differs",
                                    max_abs_diff=err, rel_l2_diff=rel))
    return out


# ------------------------------------------------------------------------------------------ tables, plot, targets


def _select(ms, **want):
    return [m for m in ms if all(m["impl"].get(k) == v for k, v in want.items())]


JAX_DENSE = dict(framework="jax", attention="dense")
JAX_LF = dict(framework="jax", attention="litefocus", duplicates="official")
TORCH_DENSE = dict(framework="torch", attention="dense")
SPEEDUPS = (("LiteFocus vs JAX dense", JAX_LF, JAX_DENSE), ("LiteFocus vs diffusers SDPA", JAX_LF, TORCH_DENSE),
            ("JAX dense vs diffusers SDPA", JAX_DENSE, TORCH_DENSE))
SCOPE_TITLES = {"attention": "one level-1 self-attention call", "unet": "one UNet call (batch 2, CFG)",
                "e2e": "end to end: denoising loop + VAE decode + vocoder"}
SCOPE_NOTES = {
    "attention": "q, k, v (B=2, N1, H, D) at UNet level 1, F = {level1_freq} frequency rows, K = int(0.1 N1) "
                 "compensation keys; torch = bare SDPA / the released algorithm over SDPA on the same q, k, v and index.",
    "unet": "Batch 2 (one prompt with classifier-free guidance), {sparse_calls} LiteFocus calls per UNet call; "
            "torch = the diffusers UNet (SDPA processors).",
    "e2e": "One prompt with CFG: the jitted lax.scan over the steps, then VAE decode + vocoder; text encoding "
           "not timed; torch = the diffusers loop with the same model sizes.",
}


def best_time(ms, **want) -> float | None:
    """Fastest median run time among the ok measurements matching `want` (over JAX kernels)."""
    times = [m["run_s"] for m in _select(ms, **want) if m["status"] == "ok"]
    return min(times) if times else None


def speedup(ms, faster: dict, slower: dict) -> float | None:
    a, b = best_time(ms, **faster), best_time(ms, **slower)
    return None if a is None or b is None else b / a


def table_groups(measurements: list[dict]) -> dict[tuple, list[dict]]:
    """{(scope, scheduler, steps): measurements}, in first-seen order: one table and plot panel each."""
    groups: dict[tuple, list] = {}
    for m in measurements:
        groups.setdefault((m["scope"], m["scheduler"], m["steps"]), []).append(m)
    return groups


def _title(key: tuple) -> str:
    scope, scheduler, steps = key
    return SCOPE_TITLES[scope] + (f", {scheduler} x {steps} steps" if scheduler else "")


def _cell(m: dict | None) -> str:
    if m is None:
        return ""
    return f"{m['run_s']:.4g}" if m["status"] == "ok" else m["status"].upper() if m["status"] == "oom" else m["status"]


def markdown_table(key: tuple, ms: list[dict]) -> str:
    ids = list(dict.fromkeys(m["id"] for m in ms))
    peer = "torch SDPA" if key[0] == "attention" else "diffusers SDPA"
    head = ["audio (s)", "N1", *ids, *(name.replace("diffusers SDPA", peer) for name, _, _ in SPEEDUPS)]
    note = SCOPE_NOTES[key[0]].format(**ms[0]["geometry"])
    lines = [f"### {key[0]}: {_title(key)}", "", note, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seconds in dict.fromkeys(m["seconds"] for m in ms):
        row_ms = [m for m in ms if m["seconds"] == seconds]
        by_id = {m["id"]: m for m in row_ms}
        ratios = [speedup(row_ms, a, b) for _, a, b in SPEEDUPS]
        cells = [f"{seconds:g}", str(row_ms[0]["geometry"]["level1_tokens"]), *(_cell(by_id.get(i)) for i in ids),
                 *("" if r is None else f"{r:.2f}x" for r in ratios)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    cfg, mach = report["config"], report["machine"]
    v = report["versions"]
    lines = [
        f"## Benchmark: {_device_name(report)}, {cfg['dtype']}, model {cfg['model']} (random weights)",
        "",
        f"{mach['cpu_model']}, {mach['cpu_affinity']} CPUs (XLA uses {cfg['xla_cpu_threads']}, torch {cfg['threads']} threads), "
        f"{(mach['ram_bytes'] or 0) / 2**30:.0f} GiB RAM; jax {v['jax']}, flax {v['flax']}, torch {v['torch']}, "
        f"diffusers {v['diffusers']}. Median of {cfg['repeats']} runs after a warm-up run ({cfg['e2e_repeats']} for e2e), "
        f"seconds; compile time is excluded (see bench.json). Speedups compare the fastest JAX kernel of each kind; "
        f"LiteFocus = official duplicate mode. OOM / timeout / error / skipped: see each measurement's reason.",
        f"Arguments: `litefocus-jax bench {' '.join(report['arguments'])}`",
    ]
    for key, ms in table_groups(report["measurements"]).items():
        lines += ["", markdown_table(key, ms)]
    return "\n".join(lines) + "\n"


def _device_name(report: dict) -> str:
    dev = report["device"]
    return f"CPU {report['machine']['cpu_model']}" if dev["backend"] == "cpu" else f"{dev['backend']} {dev['device_kind']}"


def _panel_title(key: tuple) -> str:
    scope, scheduler, steps = key
    return {"attention": "level-1 attention call", "unet": "UNet call (batch 2)"}.get(scope, f"e2e, {scheduler} x {steps} steps")


def plot(report: dict, path: Path) -> None:
    """Run time against audio length per implementation, log-log, one panel per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = table_groups(report["measurements"])
    cols = min(max(len(groups), 1), 2)
    rows = math.ceil(max(len(groups), 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 4.4 * rows), squeeze=False)
    for ax, (key, ms) in zip(axes.flat, groups.items()):
        for impl_id in dict.fromkeys(m["id"] for m in ms):
            ok = [m for m in ms if m["id"] == impl_id and m["status"] == "ok"]
            if ok:
                ax.plot([m["seconds"] for m in ok], [m["run_s"] for m in ok], marker="o", label=impl_id,
                        linestyle="--" if ok[0]["impl"]["framework"] == "torch" else "-")
        ax.set(xscale="log", yscale="log", xlabel="audio length (s)", ylabel="median run time (s)", title=_panel_title(key))
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(f"{_device_name(report)}, {report['config']['dtype']}, model {report['config']['model']} (random weights)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _target(name: str, value: float | None, threshold: float, detail: str) -> dict:
    status = "MISSING" if value is None else "PASS" if value >= threshold else "FAIL"
    return dict(name=name, status=status, value=value, threshold=threshold, detail=detail)


def _at(ms, scope, seconds=80.0, **kw):
    return [m for m in ms if m["scope"] == scope and m["seconds"] == seconds and all(m.get(k) == v for k, v in kw.items())]


def check_targets(report: dict) -> list[dict]:
    """The issue's targets, evaluated on this run's own numbers (value >= threshold passes)."""
    ms = report["measurements"]
    if report["device"]["backend"] == "cpu":
        unet, attn = _at(ms, "unet"), _at(ms, "attention")
        jax_over_torch = speedup(unet, JAX_DENSE, TORCH_DENSE)
        return [
            _target("CPU UNet 80 s: LiteFocus >= 1.5x JAX dense", speedup(unet, JAX_LF, JAX_DENSE), 1.5, "speedup"),
            _target("CPU UNet 80 s: LiteFocus faster than diffusers SDPA dense", speedup(unet, JAX_LF, TORCH_DENSE), 1.0, "speedup"),
            _target("CPU UNet 80 s: JAX dense within 10% of diffusers SDPA dense", jax_over_torch, 1 / 1.1,
                    "diffusers time / JAX time; >= 1/1.1 means JAX dense is at most 10% slower"),
            _target("CPU level-1 attention 80 s: LiteFocus >= 3.5x JAX dense", speedup(attn, JAX_LF, JAX_DENSE), 3.5, "speedup"),
        ]
    unet, e2e = _at(ms, "unet"), _at(ms, "e2e", scheduler="ddim", steps=200)
    fits = [m for m in _select(_at(ms, "e2e", seconds=320.0), **JAX_LF) if m["status"] == "ok"]
    return [
        _target("GPU UNet 80 s: LiteFocus >= 1.5x JAX cuDNN dense", speedup(unet, JAX_LF, dict(JAX_DENSE, kernel="cudnn")), 1.5, "speedup"),
        _target("GPU UNet 80 s: LiteFocus >= 1.8x diffusers SDPA", speedup(unet, JAX_LF, TORCH_DENSE), 1.8, "speedup"),
        _target("GPU e2e 80 s, 200 DDIM steps: LiteFocus >= 1.5x JAX dense", speedup(e2e, JAX_LF, JAX_DENSE), 1.5, "speedup"),
        _target("GPU 320 s generation (e2e, LiteFocus) fits in memory", 1.0 if fits else (0.0 if _at(ms, "e2e", 320.0) else None),
                1.0, "1 = an e2e LiteFocus run at 320 s finished"),
    ]


def print_targets(targets: list[dict]) -> None:
    for t in targets:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        print(f"{t['status']:7s} {t['name']}  ({t['detail']}: {value}, needs >= {t['threshold']:.3g})")


# ------------------------------------------------------------------------------------------ output


def atomic_write(path: Path, write) -> Path:
    from litefocus_jax.weights import atomic_file

    return atomic_file(path, write)


def _json_ready(report: dict) -> dict:
    """The report without the worker-side output paths (temporary files)."""
    ms = [{k: v for k, v in m.items() if not k.startswith("_")} for m in report["measurements"]]
    return dict(report, measurements=ms)


def write_outputs(report: dict, out_dir: Path, final: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_ready(report), indent=1)
    atomic_write(out_dir / "bench.json", lambda tmp: tmp.write_text(text))
    if final:
        atomic_write(out_dir / "bench.md", lambda tmp: tmp.write_text(markdown_report(report)))
        try:
            plot(report, out_dir / "bench.png")
        except ImportError:  # after hours of measurements, a missing plotting library must not lose the results
            print("bench.png not written: matplotlib is missing (pip install \"litefocus-jax[analysis]\")", file=sys.stderr)


# ------------------------------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="litefocus-jax bench", description=__doc__.split("\n\n")[0],
                                epilog="See benchmarks/README.md for the output columns.")
    p.add_argument("--scopes", nargs="+", choices=SCOPES, default=list(SCOPES), help="what to time (default: all three)")
    p.add_argument("--seconds", nargs="+", type=_seconds, default=None,
                   help=f"audio lengths for the attention and unet scopes (default {' '.join(f'{s:g}' for s in DEFAULT_SECONDS)})")
    p.add_argument("--e2e-seconds", nargs="+", type=_seconds, default=None,
                   help="audio lengths for e2e (default: --seconds). On CPU, 200 steps at 80 s take hours")
    p.add_argument("--steps", nargs="+", type=parse_steps, default=None,
                   help=f"e2e samplers as SCHEDULER:STEPS (default {' '.join(DEFAULT_STEPS)})")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="auto: float32 on CPU, bfloat16 on GPU/TPU")
    p.add_argument("--repeats", type=_positive_int, default=None, help="timed runs after the warm-up, median (default 3)")
    p.add_argument("--e2e-repeats", type=_positive_int, default=None, help="the same for e2e (default 1)")
    p.add_argument("--jax-impls", nargs="+", type=_kernel, default=None, metavar="KERNEL",
                   help="JAX attention implementations (default: xla on CPU/TPU, xla cudnn on GPU; 'default' = JAX chooses)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch/diffusers peers")
    p.add_argument("--only", nargs="+", metavar="PATTERN", default=None,
                   help="run only implementations whose id matches one of these shell patterns, e.g. "
                        "'jax-litefocus-*' 'torch-*' (ids: jax-dense:xla, torch-litefocus-official:sdpa, ...)")
    p.add_argument("--torch-threads", type=_positive_int, default=None,
                   help="torch intra-op threads (default: the CPUs XLA uses, i.e. this process's CPU affinity)")
    p.add_argument("--model", choices=MODELS, default=None, help="geometry, random weights (default audioldm2; --quick: tiny)")
    p.add_argument("--isolation", choices=("subprocess", "none"), default=None,
                   help="subprocess: each measurement in a fresh process (default; needed for RSS, --timeout, OOM "
                        "recovery); none: all in this process (--quick default)")
    p.add_argument("--timeout", type=_positive_float, default=3600.0, help="seconds per measurement (default 3600)")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="CPU only: address-space limit per measurement process (default 90%% of RAM; 0 = none)")
    p.add_argument("--seed", type=_seed, default=0, help="weights, inputs and LiteFocus indices (default 0)")
    p.add_argument("--out-dir", type=Path, default=None, help="default benchmarks/results/<device tag>/")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke run: tiny model, 0.64 s, 1 repeat, 2-step samplers, in-process (explicit options win)")
    p.add_argument("--check-targets", action="store_true", help="print PASS/FAIL for the issue's speed targets")
    p.add_argument("--dry-run", action="store_true", help="print the measurements that would run, run nothing")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def _resolve_defaults(args) -> None:
    defaults = dict(seconds=list(DEFAULT_SECONDS), repeats=3, e2e_repeats=1, steps=[parse_steps(s) for s in DEFAULT_STEPS],
                    model="audioldm2", isolation="subprocess")
    if args.quick:
        defaults.update(QUICK_DEFAULTS, steps=[parse_steps(s) for s in QUICK_DEFAULTS["steps"]])
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.e2e_seconds is None:
        args.e2e_seconds = list(args.seconds)


def environment(isolation: str) -> dict:
    """Device and versions, from a worker process when isolated: the parent must not initialise the JAX
    backend (on a GPU it would preallocate memory that the measurements need)."""
    if isolation == "none":
        return probe()
    result = run_isolated(dict(probe=True), timeout=600)
    if result.get("status") != "ok":
        raise RuntimeError(f"could not start a JAX worker process: {result.get('reason')}")
    return result


def make_config(args, env: dict) -> dict:
    backend = env["device"]["backend"]
    torch_ok = torch_available()
    torch_reason = "--no-torch" if args.no_torch else None if torch_ok else (
        f"torch/diffusers/transformers not installed: {INSTALL_HINT}")
    limit = args.memory_limit_gb
    if limit is None:
        limit = 0.9 * (_ram_bytes() or 0) / 2**30
    return dict(
        scopes=args.scopes, seconds=args.seconds, e2e_seconds=args.e2e_seconds, steps=[list(s) for s in args.steps],
        dtype=("float32" if backend == "cpu" else "bfloat16") if args.dtype == "auto" else args.dtype,
        repeats=args.repeats, e2e_repeats=args.e2e_repeats, model=args.model, backend=backend,
        jax_impls=args.jax_impls or default_jax_impls(backend), torch=dict(enabled=torch_reason is None, reason=torch_reason),
        threads=args.torch_threads or cpu_threads(), xla_cpu_threads=cpu_threads(), isolation=args.isolation, timeout_s=args.timeout if args.isolation == "subprocess" else None,
        memory_limit_bytes=int(limit * 2**30) if backend == "cpu" and args.isolation == "subprocess" and limit > 0 else None,
        only=args.only, seed=args.seed, quick=args.quick, batch=BATCH, t5_tokens=T5_TOKENS, timestep=TIMESTEP, guidance=GUIDANCE,
        litefocus=dict(ratio=RATIO, levels=[1], resample="per_call",
                       torch_indices="torch.randperm per sparse call (released); attention scope: the JAX index"),
        e2e_text="not timed: random GPT2/T5 states of the model's conditioning shapes stand in for text encoding",
    )


def _progress(i: int, n: int, spec: dict, result: dict) -> None:
    what = f"[{i}/{n}] {spec['scope']} {spec['seconds']:g} s" + (f" {spec['scheduler']}x{spec['steps']}" if spec["scheduler"] else "")
    if result["status"] == "ok":
        compile_s = result.get("compile_s")
        tail = f"run {result['run_s']:.4g} s" + (f", compile {compile_s:.3g} s" if compile_s is not None else "")
    else:
        tail = f"{result['status']}: {(result.get('reason') or '')[:200]}"
    print(f"{what} {spec['id']}: {tail}", file=sys.stderr, flush=True)


def run_benchmarks(cfg: dict, report: dict, out_dir: Path) -> None:
    specs = plan_measurements(cfg)
    failed: dict = {}
    with tempfile.TemporaryDirectory(prefix="litefocus-bench-") as workdir:
        for i, spec in enumerate(specs, 1):
            result = run_one(spec, cfg, failed, Path(workdir) / f"{i}.npy")
            report["measurements"].append(_record(spec, result))
            _progress(i, len(specs), spec, result)
            write_outputs(report, out_dir, final=False)
        report["agreement"] = agreement(report["measurements"])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main()
    _resolve_defaults(args)
    try:
        env = environment(args.isolation)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = make_config(args, env)
    machine = machine_info()
    out_dir = args.out_dir or Path("benchmarks/results") / device_tag(machine, env["device"])
    if args.dry_run:
        for spec in plan_measurements(cfg):
            print(f"{spec['scope']:9s} {spec['seconds']:>7g} s {spec['scheduler'] or '':11s} {spec['steps'] or '':>4} {spec['id']}")
        return 0
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: cannot create --out-dir {out_dir}: {e}", file=sys.stderr)
        return 2
    print(f"benchmark on {env['device']['backend']} ({env['device']['device_kind']}), {cfg['dtype']}, model {cfg['model']}, "
          f"torch peers {'on' if cfg['torch']['enabled'] else 'off: ' + cfg['torch']['reason']}; writing {out_dir}", file=sys.stderr)
    report = dict(schema=SCHEMA, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  complete=False, command=[Path(sys.argv[0]).name, *sys.argv[1:]],
                  arguments=list(sys.argv[1:] if argv is None else argv),
                  machine=machine, device=env["device"], versions=env["versions"], config=cfg, measurements=[],
                  agreement=[], targets=None)
    run_benchmarks(cfg, report, out_dir)
    report["complete"] = True
    if args.check_targets:
        report["targets"] = check_targets(report)
    write_outputs(report, out_dir, final=True)
    print(markdown_report(report))
    if report["targets"]:
        print_targets(report["targets"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
