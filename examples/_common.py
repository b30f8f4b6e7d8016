"""Shared by the examples: the --model / tiny-model choice, the output folder, the XLA cache, atomic outputs.

Not an example itself: tests/test_examples.py runs every examples/*.py whose name does not start with "_".
Nothing here imports jax at module level, so an example can still set XLA_FLAGS after importing this module.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

DEFAULT_PROMPT = "a steady rain on a tin roof, distant thunder"
# the same persistent XLA cache as `litefocus-jax generate --cache-dir`: a second run skips compilation
DEFAULT_CACHE = os.environ.get("LITEFOCUS_JAX_CACHE", str(Path.home() / ".cache" / "litefocus_jax" / "xla"))
TINY_NOTE = (
    "NOTE: no --model given, so this runs a TINY model with RANDOM weights built in-process (no download). "
    "Its audio is NOISE: this run shows the machinery and the timings, not audio quality. "
    "Pass --model cvssp/audioldm2 (or a local snapshot folder) for real audio."
)


def die(message: str):
    """Exit with status 2 (bad arguments or setup), like argparse and `litefocus-jax`."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def make_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """A parser with the options every example shares; the module docstring is its help text."""
    import importlib.util

    if importlib.util.find_spec("litefocus_jax") is None:  # find_spec does not import it (nor jax)
        die("the litefocus_jax package is not importable: run `pip install -e .` in the repository root.")
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=None,
        help="real weights: a Hub id (cvssp/audioldm2, -large, -music) or a local snapshot folder, "
        "diffusers or converted (default: the tiny random-weight model, no download)",
    )
    parser.add_argument(
        "--out-dir",
        default=str(Path("example_outputs") / name),
        help=f"output folder, created if needed (default ./example_outputs/{name})",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="model dtype; bfloat16 suits GPU/TPU (default float32)",
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    parser.add_argument(
        "--cache-dir",
        default=DEFAULT_CACHE,
        help="persistent XLA compilation cache ('' disables; default ~/.cache/litefocus_jax/xla or $LITEFOCUS_JAX_CACHE)",
    )
    return parser


def add_generation_args(
    parser, *, seconds: tuple, steps: tuple, prompt: bool = True, seconds_help: str = "audio length in seconds"
) -> None:
    """--prompt, --seconds, --steps, --guidance. seconds and steps are (tiny model, real weights) defaults,
    applied after parsing by `fill_defaults(args, seconds=..., steps=...)`."""
    if prompt:
        parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text prompt")
    parser.add_argument(
        "--seconds",
        type=positive_float,
        default=None,
        help=f"{seconds_help} (default {seconds[1]:g} with --model, {seconds[0]:g} on the tiny model)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"DDIM steps (default {steps[1]} with --model, {steps[0]} on the tiny model)",
    )
    parser.add_argument("--guidance", type=float, default=3.5, help="classifier-free guidance scale (default 3.5)")


def fill_defaults(args, **defaults: tuple) -> None:
    """Options left at None take their (tiny model, real weights) default, e.g. seconds=(1.0, 80.0)."""
    for key, (tiny, real) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.model is None else real)


def prepare_out_dir(out_dir: str) -> Path:
    from litefocus_jax.tools.batch import check_writable

    try:
        return check_writable(out_dir)
    except OSError as e:
        die(f"{e} Pass a writable --out-dir.")


def load_pipeline(args):
    """(pipeline, is_tiny): real weights from --model, else the tiny random-weight pipeline.

    Also turns on the persistent XLA cache. A missing or wrong model ends the run here, before any compile.
    """
    import jax
    import jax.numpy as jnp

    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    dtype = getattr(jnp, args.dtype)
    if args.model is None:
        from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline

        print(TINY_NOTE)
        pipe, tiny = build_tiny_pipeline(seed=0, dtype=dtype), True
    else:
        from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import (
            AudioLDM2Pipeline,
        )

        try:
            pipe, tiny = AudioLDM2Pipeline.from_pretrained(args.model, dtype=dtype), False
        except (FileNotFoundError, ValueError) as e:  # ConversionError is a ValueError
            die(f"--model {args.model}: {e}")
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({len(jax.local_devices())} local device(s), "
        f"{jax.devices()[0].device_kind}); model: {args.model or 'tiny random weights'}, {args.dtype}"
    )
    return pipe, tiny


def latent_grid(pipe, seconds: float) -> tuple[int, int]:
    """(T, F) of the UNet input for `seconds` of audio."""
    return pipe.latent_frames(seconds)[0], pipe.mel_bins // pipe.vae_scale_factor


def plan_for(pipe, litefocus, seconds: float):
    """The LiteFocus plan of one UNet call of `pipe` at `seconds` (None for dense)."""
    from litefocus_jax.litefocus.plan import make_plan

    return make_plan(
        pipe.unet_config, litefocus, latent_grid(pipe, seconds), pipe.vae_scale_factor * pipe.vocoder_upsample_factor
    )


def describe_plan(plan) -> str:
    if plan is None:
        return "dense (litefocus=None)"
    if not plan.active:
        return "dense (length rule)"
    levels = ", ".join(
        f"level {lp.level}: {lp.calls} calls, T x F = {lp.time} x {lp.freq_bins}, K = {lp.comp_tokens}" for lp in plan.levels
    )
    return f"{plan.num_calls} sparse calls per UNet call ({levels})"


def save_audio(path: Path, audio, sampling_rate: int, tiny: bool) -> Path:
    """An atomic 16-bit wav. The tiny model's output is peak-normalised: its random weights give amplitudes
    too small to hear, and it is noise either way. Real audio is written as generated."""
    import numpy as np

    from litefocus_jax.utils.io import save_wav

    audio = np.asarray(audio, np.float32)
    peak = float(np.abs(audio).max()) if audio.size and np.isfinite(audio).all() else 0.0
    if tiny and peak > 0:
        audio = audio / peak * 0.5
    return save_wav(path, audio, sampling_rate)


def write_json(path: Path, obj) -> Path:
    from litefocus_jax.utils.io import atomic_file

    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    return atomic_file(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def timed_calls(pipe, prompt: str, repeats: int = 1, **kwargs) -> tuple:
    """(output of the first call, {first_call_s, run_s, compile_s}): `pipe(prompt, **kwargs)` once to compile
    and run, then `repeats` timed calls (median). The pipeline returns numpy, so each call has finished."""
    import statistics
    import time

    start = time.perf_counter()
    out = pipe(prompt, **kwargs)
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(prompt, **kwargs)
        runs.append(time.perf_counter() - start)
    run = statistics.median(runs) if runs else first
    return out, dict(first_call_s=first, run_s=run, compile_s=max(first - run, 0.0))


def relative_l2(a, b) -> float:
    """||a - b|| / ||b|| over the common length (0 when both are zero)."""
    import numpy as np

    n = min(len(a), len(b))
    a, b = np.asarray(a[:n], np.float64), np.asarray(b[:n], np.float64)
    norm = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / norm if norm else float(np.linalg.norm(a - b))
