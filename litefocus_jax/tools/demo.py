"""The main job, with nothing to download: the real-size AudioLDM2 base UNet with random weights, one dense
and one LiteFocus UNet call (classifier-free-guidance batch of 2) at a long audio length.

    python -m litefocus_jax.tools.demo [--seconds 20] [--batch 2] [--dtype float32|bfloat16]

Prints compile and run times of each, their ratio, and how far the LiteFocus output is from dense.
Random weights say nothing about audio quality; they measure speed at the real geometry.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from litefocus_jax.litefocus.plan import (
    AUDIOLDM2_LATENT_FRAME_SECONDS,
    LiteFocusConfig,
    indices_for_step,
    make_comp_indices,
    make_plan,
)
from litefocus_jax.models.presets import unet_config
from litefocus_jax.models.unet_audioldm2 import init_unet


def _timed(fn, *args, repeats: int):
    from litefocus_jax.tools.bench.timing import timed_runs

    out, first, runs = timed_runs(lambda: fn(*args), repeats, jax.block_until_ready)
    return out, first, float(np.median(runs)) if runs else first


def run(seconds: float, batch: int, dtype, repeats: int, preset: str = "audioldm2", seed: int = 0) -> dict:
    latent_frames = int(round(seconds / AUDIOLDM2_LATENT_FRAME_SECONDS))
    lf = LiteFocusConfig(seed=seed)
    unet = init_unet(unet_config(preset), seed=seed, dtype=dtype)
    apply, params = unet.functional()
    rng = np.random.default_rng(seed)
    sample = jnp.asarray(rng.standard_normal((batch, latent_frames, 16, 8)), dtype)
    gpt2 = jnp.asarray(rng.standard_normal((batch, 8, 768)), dtype)
    t5 = jnp.asarray(rng.standard_normal((batch, 12, 1024)), dtype)
    mask = jnp.ones((batch, 12), jnp.int32)
    plan = make_plan(unet.config, lf, sample.shape)
    comp = indices_for_step(make_comp_indices(plan, 1), 0)

    dense = jax.jit(lambda p, x: apply(p, x, 501, gpt2, t5, None, mask, litefocus=None))
    sparse = jax.jit(lambda p, x, idx: apply(p, x, 501, gpt2, t5, None, mask, comp_indices=idx, litefocus=lf))
    out_d, first_d, run_d = _timed(dense, params, sample, repeats=repeats)
    out_s, first_s, run_s = _timed(sparse, params, sample, comp, repeats=repeats)
    diff = np.asarray(out_s, np.float32) - np.asarray(out_d, np.float32)
    return dict(
        seconds=seconds,
        latent_frames=latent_frames,
        batch=batch,
        dtype=jnp.dtype(dtype).name,
        level1_tokens=plan.levels[0].time * plan.levels[0].freq_bins,
        sparse_calls=plan.num_calls,
        dense_first_s=first_d,
        dense_run_s=run_d,
        litefocus_first_s=first_s,
        litefocus_run_s=run_s,
        speedup=run_d / run_s,
        max_abs_diff=float(np.abs(diff).max()),
        rel_l2_diff=float(np.linalg.norm(diff) / np.linalg.norm(np.asarray(out_d, np.float32))),
        device=str(jax.devices()[0].device_kind),
        backend=jax.default_backend(),
    )


def print_report(r: dict) -> None:
    """The timing table of one `run` result."""
    print(
        f"audio {r['seconds']} s -> latent {r['latent_frames']} x 16, level-1 tokens N = {r['level1_tokens']}, "
        f"{r['sparse_calls']} LiteFocus calls per UNet call, batch {r['batch']}, {r['dtype']}"
    )
    print(f"{'':10s} {'compile+run (s)':>16s} {'run (s)':>10s}")
    print(f"{'dense':10s} {r['dense_first_s']:16.2f} {r['dense_run_s']:10.2f}")
    print(f"{'LiteFocus':10s} {r['litefocus_first_s']:16.2f} {r['litefocus_run_s']:10.2f}")
    print(f"LiteFocus speedup over dense: {r['speedup']:.2f}x")
    print(f"output difference LiteFocus - dense: max abs {r['max_abs_diff']:.3e}, relative L2 {r['rel_l2_diff']:.3e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="audio length; 25 latent frames per second (default 20, twice the training length)",
    )
    parser.add_argument("--batch", type=int, default=2, help="UNet batch (2 = one prompt with classifier-free guidance)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after the compiling one (median)")
    args = parser.parse_args(argv)
    if args.seconds < 0.32 or args.batch < 1:
        parser.error("--seconds must be >= 0.32 (LiteFocus needs compensation tokens) and --batch >= 1")
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); building the real-size "
        f"cvssp/audioldm2 UNet with random weights (random weights: timings only, no audio meaning)"
    )
    r = run(args.seconds, args.batch, getattr(jnp, args.dtype), args.repeats)
    print_report(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
