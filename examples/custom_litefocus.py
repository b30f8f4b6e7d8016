"""Custom LiteFocus policies: which UNet levels, the length rule, duplicate modes, the ratio, resampling.

    python examples/custom_litefocus.py                           # tiny random-weight model, 1 s clips, 2 steps
    python examples/custom_litefocus.py --model cvssp/audioldm2   # real weights, 20 s clips, 200 DDIM steps

For every policy below it prints the plan (`litefocus_jax.litefocus.make_plan`: sparse calls per UNet call,
T x F and K = int(ratio * T * F) compensation keys per level), how many distinct compensation subsets one
generation draws (`make_comp_indices`), then generates a clip from the same prompt and seed and reports its
distance from the dense clip. Each policy is a `LiteFocusConfig`, passed as `pipe(..., litefocus=config)`:

    released        LiteFocusConfig()                        level 1 only, official duplicates, ratio 0.1, per_call
    levels 1+2      LiteFocusConfig(levels=(1, 2))           also the next, coarser level (and its up-block mirror)
    exact           LiteFocusConfig(duplicates="exact")      the true union S_i u C: a key in the query's row counts once
    ratio 0.25      LiteFocusConfig(ratio=0.25)              more cross-frequency compensation keys
    per_step        LiteFocusConfig(resample="per_step")     one subset per denoising step, shared by its calls
    fixed           LiteFocusConfig(resample="fixed")        one subset for the whole generation
    length rule     LiteFocusConfig(dense_at_or_below_s=10.24)  dense up to the training length, sparse beyond

Each clip is generated twice (the first call compiles when the policy needs a new program; the second is timed).
Policies that change the computation compile once each; `seed` and `resample` only change the index data,
and a length rule that keeps a clip dense runs the dense program.
Without --model the weights are random: the clips are noise and the distances say nothing about quality.
Writes into --out-dir (default ./example_outputs/custom_litefocus): one wav per policy and summary.json.
"""

from __future__ import annotations

import sys

import _common as common
import numpy as np

TRAINING_LENGTH_S = 10.24
SECONDS, STEPS = (1.0, 20.0), (2, 200)  # (tiny model, real weights)


def policies(seed: int) -> dict:
    from litefocus_jax.litefocus.plan import LiteFocusConfig

    return {
        "dense": None,
        "released": LiteFocusConfig(seed=seed),
        "levels 1+2": LiteFocusConfig(levels=(1, 2), seed=seed),
        "exact": LiteFocusConfig(duplicates="exact", seed=seed),
        "ratio 0.25": LiteFocusConfig(ratio=0.25, seed=seed),
        "per_step": LiteFocusConfig(resample="per_step", seed=seed),
        "fixed": LiteFocusConfig(resample="fixed", seed=seed),
        "length rule": LiteFocusConfig(dense_at_or_below_s=TRAINING_LENGTH_S, seed=seed),
    }


def parse_args(argv):
    parser = common.make_parser(__doc__, "custom_litefocus")
    common.add_generation_args(parser, seconds=SECONDS, steps=STEPS, seconds_help="clip length in seconds")
    parser.add_argument(
        "--only", default=None, help="comma-separated policy names to generate (default all; dense is always generated)"
    )
    parser.add_argument("--plans-only", action="store_true", help="print the plans, generate nothing")
    args = parser.parse_args(argv)
    common.fill_defaults(args, seconds=SECONDS, steps=STEPS)
    return args


def plan_row(pipe, config, seconds: float, steps: int) -> dict:
    """The plan of one policy at `seconds`, and how many distinct subsets a generation of `steps` draws."""
    from litefocus_jax.litefocus.plan import make_comp_indices

    plan = common.plan_for(pipe, config, seconds)
    subsets = 0
    if plan is not None and plan.active:
        subsets = sum(
            len(np.unique(rows.reshape(-1, rows.shape[-1]), axis=0)) for rows in make_comp_indices(plan, steps).values()
        )
    return dict(
        plan=common.describe_plan(plan),
        sparse_calls=0 if plan is None else plan.num_calls,
        levels={
            lp.key: dict(calls=lp.calls, time=lp.time, freq_bins=lp.freq_bins, comp_tokens=lp.comp_tokens)
            for lp in (plan.levels if plan else ())
        },
        distinct_subsets=subsets,
    )


def show_validation(pipe) -> None:
    """Bad policies fail at construction or planning, before anything compiles."""
    from litefocus_jax.litefocus.plan import LiteFocusConfig

    attempts = [
        ("LiteFocusConfig(ratio=0)", lambda: LiteFocusConfig(ratio=0)),
        (
            "LiteFocusConfig(same_frequency=False, cross_frequency=False)",
            lambda: LiteFocusConfig(same_frequency=False, cross_frequency=False),
        ),
        ("levels=(0,) on this UNet", lambda: common.plan_for(pipe, LiteFocusConfig(levels=(0,)), 1.0)),
    ]
    print("\nvalidation (these raise ValueError up front):")
    for text, attempt in attempts:
        try:
            attempt()
            print(f"  {text}: accepted")
        except ValueError as e:
            print(f"  {text}: {e}")


def select(all_policies: dict, only: str | None) -> dict:
    if only is None:
        return all_policies
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in all_policies]
    if unknown:
        common.die(f"--only: unknown policy {unknown}; choose from {list(all_policies)}.")
    return {n: c for n, c in all_policies.items() if n == "dense" or n in names}


def generate_all(pipe, args, chosen: dict, rows: dict, out_dir, tiny: bool) -> None:
    """One clip per policy, same prompt and seed; adds timings, wav and distance from dense to `rows`."""
    dense_audio = None
    for i, (name, config) in enumerate(chosen.items()):
        out, timing = common.timed_calls(
            pipe,
            args.prompt,
            1,
            audio_length_in_s=args.seconds,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            litefocus=config,
        )
        audio = out.audios[0]
        dense_audio = audio if dense_audio is None else dense_audio
        path = common.save_audio(
            out_dir / f"{i:02d}-{name.replace(' ', '-').replace('+', '')}.wav", audio, out.sampling_rate, tiny
        )
        rows[name].update(timing, wav=path.name, vs_dense=common.relative_l2(audio, dense_audio))
        print(f"  {name:12s} first call {timing['first_call_s']:6.1f} s, run {timing['run_s']:6.2f} s  {path}", flush=True)


def print_table(rows: dict) -> None:
    print(f"\n{'policy':12s} {'calls':>5s} {'subsets':>7s} {'vs dense':>8s} {'run s':>7s}  plan")
    for name, r in rows.items():
        vs = f"{r['vs_dense']:8.3f}" if "vs_dense" in r else f"{'-':>8s}"
        run = f"{r['run_s']:7.2f}" if "run_s" in r else f"{'-':>7s}"
        print(f"{name:12s} {r['sparse_calls']:5d} {r['distinct_subsets']:7d} {vs} {run}  {r['plan']}")
    print(
        "calls: sparse self-attention calls per UNet call; subsets: distinct compensation subsets one generation "
        "draws;\nvs dense: relative L2 distance of the waveform from the dense one (same seed); run s: one warm call."
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    chosen = select(policies(args.seed), args.only)
    out_dir = common.prepare_out_dir(args.out_dir)
    pipe, tiny = common.load_pipeline(args)
    try:
        rows = {name: plan_row(pipe, config, args.seconds, args.steps) for name, config in chosen.items()}
    except ValueError as e:  # e.g. a clip too short for one compensation token
        common.die(f"--seconds {args.seconds}: {e}")
    print(
        f"{args.seconds:g} s clips, {args.steps} steps, latent T x F = {common.latent_grid(pipe, args.seconds)}, "
        f"self-attention calls per UNet call by level: {pipe.unet_config.self_attention_calls()}"
    )
    rule = policies(args.seed)["length rule"]
    for seconds in sorted({TRAINING_LENGTH_S, max(args.seconds, 20.0)}):
        print(
            f"length rule dense_at_or_below_s={TRAINING_LENGTH_S}: at {seconds:g} s -> "
            f"{common.describe_plan(common.plan_for(pipe, rule, seconds))}"
        )
    show_validation(pipe)
    if not args.plans_only:
        print("\ngenerating one clip per policy:")
        generate_all(pipe, args, chosen, rows, out_dir, tiny)
    print_table(rows)
    summary = dict(
        model=args.model or "tiny-random",
        tiny_random_weights=tiny,
        prompt=args.prompt,
        seconds=args.seconds,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        policies=rows,
    )
    print(f"wrote {common.write_json(out_dir / 'summary.json', summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
