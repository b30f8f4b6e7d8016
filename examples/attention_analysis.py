"""Where does AudioLDM2's UNet self-attention look? Own-frequency-row mass per level, and Figure-2 style heat maps.

    python examples/attention_analysis.py                              # tiny random-weight model, seconds on a CPU
    python examples/attention_analysis.py --model cvssp/audioldm2      # real weights (Hub id or local snapshot)

LiteFocus keeps, for every query, the keys of its own frequency row (plus a few random others). This runs a
generation, captures the dense attention probabilities of a few queries (--queries, spread over the token
grid) in every UNet self-attention at the first, middle and last denoising steps (--capture-steps), and
prints the fraction of each query's mass on its own frequency row, per step and level, beside the uniform
baseline 1/F ("x uniform" = how many times the uniform share). --litefocus runs the generation itself with
LiteFocus; the captured probabilities stay dense.

Without --model the weights are random: everything runs, but the maps carry no learned structure (row mass
near 1/F) and the output says so. Real weights reproduce the paper's same-frequency observation.

Writes into --out-dir (default ./example_outputs/attention_analysis): report.json (per level, block, head and
step) and one PNG per captured step for the first self-attention of each level (--all-heatmaps: every one).
Heat maps need matplotlib: pip install "litefocus-jax[analysis]" (--no-heatmaps skips them).
"""

from __future__ import annotations

import sys
import time

import _common as common


def parse_args(argv):
    parser = common.make_parser(__doc__, "attention_analysis")
    parser.add_argument("--prompt", default=common.DEFAULT_PROMPT, help="text prompt")
    parser.add_argument(
        "--seconds",
        type=common.positive_float,
        default=None,
        help="audio length in seconds (default 10.24 with --model, 1.28 on the tiny model)",
    )
    parser.add_argument(
        "--steps", type=common.positive_int, default=None, help="denoising steps (default 50 with --model, 2 on the tiny model)"
    )
    parser.add_argument(
        "--capture-steps",
        default=None,
        help="comma-separated step indices to capture, negative from the end (default: first, middle, last)",
    )
    parser.add_argument("--queries", type=common.positive_int, default=4, help="queries per self-attention (default 4)")
    parser.add_argument("--guidance", type=float, default=3.5, help="classifier-free guidance scale (default 3.5)")
    parser.add_argument("--litefocus", action="store_true", help="generate with LiteFocus (the maps stay dense)")
    parser.add_argument("--all-heatmaps", action="store_true", help="a PNG for every self-attention, not one per level")
    parser.add_argument("--no-heatmaps", action="store_true", help="table and report only (no matplotlib needed)")
    args = parser.parse_args(argv)
    common.fill_defaults(args, seconds=(1.28, 10.24), steps=(2, 50))
    try:
        args.capture_steps = (
            tuple(int(s) for s in args.capture_steps.split(","))
            if args.capture_steps
            else tuple(sorted({0, args.steps // 2, args.steps - 1}))
        )
    except ValueError:
        common.die(f"--capture-steps {args.capture_steps!r}: give comma-separated ints, e.g. 0,25,-1.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from litefocus_jax.litefocus.plan import LiteFocusConfig
    from litefocus_jax.research import analysis as an

    if not args.no_heatmaps:
        try:
            an.require_matplotlib()  # before loading and compiling anything
        except ImportError as e:
            common.die(f"{e} (or pass --no-heatmaps)")
    out_dir = common.prepare_out_dir(args.out_dir)
    start = time.perf_counter()
    pipe, tiny = common.load_pipeline(args)
    try:
        capture = an.capture_attention(
            pipe,
            args.prompt,
            weights=an.RANDOM_WEIGHTS if tiny else args.model,
            audio_length_in_s=args.seconds,
            num_inference_steps=args.steps,
            steps=args.capture_steps,
            queries=args.queries,
            seed=args.seed,
            guidance_scale=args.guidance,
            litefocus=LiteFocusConfig() if args.litefocus else None,
        )
    except ValueError as e:
        common.die(str(e))
    rows = an.summarize(capture)
    print(
        f"\nOwn-frequency-row attention mass: {args.seconds:g} s, {args.steps} steps, {args.queries} queries per "
        f"self-attention, {'LiteFocus' if args.litefocus else 'dense'} generation; mean over blocks, heads, "
        "queries and both guidance branches (per-head rows in report.json)."
    )
    print(an.format_table(rows, ("step", "level"), weights_note=capture.weights_note))
    written = [an.write_report(capture, out_dir / "report.json", rows)]
    if not args.no_heatmaps:
        first_per_level = list({s.level: s.name for s in reversed(capture.sites)}.values())
        written += an.save_heatmaps(capture, out_dir, blocks=None if args.all_heatmaps else first_per_level)
    print(f"\nwrote {len(written)} file(s) to {out_dir} ({time.perf_counter() - start:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
