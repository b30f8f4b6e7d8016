"""Long audio, dense vs LiteFocus side by side: same prompt, same seed, same noise; timings, their ratio, two wavs.

    python examples/long_audio.py                              # tiny random-weight model, 1 s, 2 steps (seconds on a CPU)
    python examples/long_audio.py --model cvssp/audioldm2      # real weights: 80 s, 200 DDIM steps (meant for a GPU/TPU)
    python examples/long_audio.py --model cvssp/audioldm2 --seconds 160 --dtype bfloat16

Each attention mode is generated 1 + --repeats times through `pipe(prompt, ..., litefocus=...)`: the first call
compiles (one XLA program per mode, length and step count; the first mode's first call also compiles text
encoding and decoding), the later calls are timed alone, so "compile" = first call - timed call. The
speedup is dense run time / LiteFocus run time, end to end (text encoding, denoising, decoding).

LiteFocus is `litefocus=LiteFocusConfig(...)`; dense is `litefocus=None`. The gain grows with the length:
self-attention is quadratic in it, everything else linear (see the README and LITEFOCUS.md section 5).
Without --model the weights are random: the wavs are noise (peak-normalised so they are audible).

Writes into --out-dir (default ./example_outputs/long_audio): dense.wav, litefocus.wav, timings.json.
"""

from __future__ import annotations

import sys

import _common as common

SECONDS, STEPS = (1.0, 80.0), (2, 200)  # (tiny model, real weights)


def parse_args(argv):
    parser = common.make_parser(__doc__, "long_audio")
    common.add_generation_args(parser, seconds=SECONDS, steps=STEPS, seconds_help="audio length in seconds, e.g. 80 or 160")
    parser.add_argument("--ratio", type=float, default=0.1, help="LiteFocus compensation ratio in (0, 1] (default 0.1)")
    parser.add_argument(
        "--repeats",
        type=common.positive_int,
        default=1,
        help="timed calls per mode after the compiling one; the median is reported (default 1)",
    )
    args = parser.parse_args(argv)
    common.fill_defaults(args, seconds=SECONDS, steps=STEPS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from litefocus_jax.litefocus.plan import LiteFocusConfig

    try:
        litefocus = LiteFocusConfig(ratio=args.ratio, seed=args.seed)
    except ValueError as e:
        common.die(str(e))
    out_dir = common.prepare_out_dir(args.out_dir)
    pipe, tiny = common.load_pipeline(args)
    try:
        plan = common.plan_for(pipe, litefocus, args.seconds)
    except ValueError as e:  # e.g. too short for one compensation token
        common.die(f"--seconds {args.seconds}: {e}")
    print(
        f"{args.seconds:g} s of audio, {args.steps} steps, guidance {args.guidance}, seed {args.seed}; "
        f"latent T x F = {common.latent_grid(pipe, args.seconds)}"
    )
    print(f"LiteFocus: {common.describe_plan(plan)}")
    if args.seconds <= 10.24:
        print("(at or below the 10.24 s training length LiteFocus has little to gain; try --seconds 80)")

    results, audios = {}, {}
    for name, config in (("dense", None), ("litefocus", litefocus)):
        print(f"generating {name} ...", flush=True)
        out, results[name] = common.timed_calls(
            pipe,
            args.prompt,
            args.repeats,
            audio_length_in_s=args.seconds,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            seed=args.seed,
            litefocus=config,
        )
        audios[name] = out.audios[0]
        results[name]["wav"] = common.save_audio(out_dir / f"{name}.wav", audios[name], out.sampling_rate, tiny).name

    speedup = results["dense"]["run_s"] / results["litefocus"]["run_s"]
    difference = common.relative_l2(audios["litefocus"], audios["dense"])
    print(f"\n{'mode':10s} {'first call (s)':>15s} {'compile (s)':>12s} {'run (s)':>10s}  wav")
    for name, r in results.items():
        print(f"{name:10s} {r['first_call_s']:15.2f} {r['compile_s']:12.2f} {r['run_s']:10.2f}  {out_dir / r['wav']}")
    print(f"LiteFocus speedup, dense run / LiteFocus run: {speedup:.2f}x")
    print(
        f"waveform difference LiteFocus vs dense (relative L2): {difference:.3f}"
        + (" (random weights: says nothing about quality)" if tiny else "")
    )
    report = dict(
        model=args.model or "tiny-random",
        tiny_random_weights=tiny,
        prompt=args.prompt,
        seconds=args.seconds,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        dtype=args.dtype,
        repeats=args.repeats,
        litefocus_config=dict(ratio=litefocus.ratio, levels=list(litefocus.levels), sparse_calls=plan.num_calls),
        timings=results,
        speedup=speedup,
        relative_l2_difference=difference,
    )
    print(f"wrote {common.write_json(out_dir / 'timings.json', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
