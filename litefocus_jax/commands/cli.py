"""`litefocus-jax` command line: generate, convert, demo, bench, platform-check, evaluate.

    litefocus-jax generate "a dog barks" --model cvssp/audioldm2 --seconds 20 --attention litefocus
    litefocus-jax generate --prompts prompts.jsonl --out-dir outputs --batch-size 8
    litefocus-jax generate "a dog barks" --candidates 3     # AudioLDM2's protocol: keep the CLAP-best of 3
    litefocus-jax convert SRC DST [--dtype bfloat16]
    litefocus-jax demo
    litefocus-jax bench ...                                  # benchmarks/README.md
    litefocus-jax platform-check --platform tpu --seconds 320 # the TPU/CUDA program, checked from any machine
    litefocus-jax evaluate GENERATED --reference REF ...      # FAD/FD/KL/IS/KID/CLAP; --generate: dense vs LiteFocus table

Exit status: 0 everything written; 1 some items failed (listed at the end); 2 bad arguments or setup
(unwritable --out-dir, missing model, unreadable prompts file), reported before anything compiles.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from litefocus_jax.utils.cli_args import (
    finite_float,
    positive_float,
    positive_int,
    seed_value,
    unit_ratio,
)

DEFAULT_MODEL = "cvssp/audioldm2"
SCHEDULERS = ("ddim", "dpmsolver++")
ATTENTION = ("dense", "litefocus")
DTYPES = ("float32", "bfloat16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litefocus-jax", description="AudioLDM2 text-to-audio in JAX with LiteFocus sparse attention."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,convert,demo,bench,platform-check,evaluate}")

    g = sub.add_parser(
        "generate",
        help="text to wav files (one prompt, or a prompts file), resumable",
        description="Generate one wav per prompt into --out-dir, with a JSONL manifest. Re-running the same "
        "command skips finished items. Exit 1 if any item failed, 2 on bad setup.",
    )
    g.add_argument("prompt", nargs="?", help="one text prompt (or use --prompts)")
    g.add_argument(
        "--prompts",
        metavar="FILE",
        help="prompts file: plain text, one prompt a line; or JSONL lines "
        '{"prompt": ..., "negative_prompt": ..., "seconds": ..., "seed": ...} (all but prompt optional)',
    )
    g.add_argument("--out-dir", default="outputs", help="output folder for wavs and manifest.jsonl (default ./outputs)")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"snapshot folder (diffusers or converted), Hub id (default {DEFAULT_MODEL}), or 'tiny': a built-in "
        "random-weight model, no download (its audio is noise)",
    )
    g.add_argument("--seconds", type=positive_float, default=10.0, help="audio length in seconds (default 10; per item in JSONL)")
    g.add_argument("--steps", type=positive_int, default=200, help="denoising steps (default 200)")
    g.add_argument("--scheduler", choices=SCHEDULERS, default="ddim", help="ddim (the snapshot's) or dpmsolver++ (default ddim)")
    g.add_argument(
        "--guidance", type=finite_float, default=3.5, help="classifier-free guidance scale; <= 1 disables it (default 3.5)"
    )
    g.add_argument(
        "--seed",
        type=seed_value,
        default=0,
        help="global seed; item i uses a seed hashed from (seed, i) unless its JSONL line gives one (default 0)",
    )
    g.add_argument(
        "--attention", choices=ATTENTION, default="dense", help="dense, or litefocus dual sparse self-attention (default dense)"
    )
    g.add_argument("--ratio", type=unit_ratio, default=0.1, help="LiteFocus compensation ratio in (0, 1] (default 0.1)")
    g.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="items per denoising batch, rounded up to a multiple of the device count (default 4)",
    )
    g.add_argument(
        "--candidates",
        type=positive_int,
        default=1,
        metavar="N",
        help="generate N candidates per item and keep the one CLAP ranks best (AudioLDM2's protocol: 3); the manifest "
        "records its clap_score and all candidate_scores. Each candidate takes one row of --batch-size (default 1)",
    )
    g.add_argument("--negative-prompt", default="", help="negative prompt for every item without its own (default none)")
    g.add_argument(
        "--transcription",
        help="speech snapshots (anhnct/audioldm2_gigaspeech...): the words to speak for the one prompt, which then "
        'describes the voice; with --prompts give each JSONL line a "transcription"',
    )
    g.add_argument(
        "--phonemes",
        action="store_true",
        help="transcriptions are already phonemes (IPA as espeak-ng writes them): no phonemizer/espeak-ng needed",
    )
    g.add_argument("--save-npy", action="store_true", help="also write each float32 waveform as .npy next to its wav")
    g.add_argument(
        "--cache-dir",
        default=os.environ.get("LITEFOCUS_JAX_CACHE", str(Path.home() / ".cache" / "litefocus_jax" / "xla")),
        help="persistent XLA compilation cache ('' disables; default ~/.cache/litefocus_jax/xla or $LITEFOCUS_JAX_CACHE)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bars (denoising steps of one item, items of a batch)")
    g.add_argument(
        "--mesh",
        help="data=D,seq=S: one clip across D x S devices, its latent time axis split over S (sequence parallelism, "
        "README); in a multi-process launch D x S may be all processes' devices: then they generate every item "
        "together and process 0 writes; default: items split over all local devices",
    )

    c = sub.add_parser("convert", help="convert a diffusers AudioLDM2 snapshot to litefocus_jax safetensors", add_help=False)
    c.add_argument("args", nargs=argparse.REMAINDER, help="see `litefocus-jax convert --help`")
    b = sub.add_parser(
        "bench", help="benchmarks: JAX dense/LiteFocus vs the PyTorch peers (benchmarks/README.md)", add_help=False
    )
    b.add_argument("args", nargs=argparse.REMAINDER, help="see `litefocus-jax bench --help`")
    pc = sub.add_parser(
        "platform-check",
        help="lower the real-size UNet/VAE for TPU or CUDA on any machine and report its largest arrays",
        add_help=False,
    )
    pc.add_argument("args", nargs=argparse.REMAINDER, help="see `litefocus-jax platform-check --help`")
    e = sub.add_parser(
        "evaluate",
        help="quality metrics (FAD, FD, KL, IS, KID, CLAP) of a folder, or --generate: dense vs LiteFocus in one table",
        add_help=False,
    )
    e.add_argument("args", nargs=argparse.REMAINDER, help="see `litefocus-jax evaluate --help`")

    d = sub.add_parser(
        "demo",
        help="no download: tiny random model end to end, then real-size UNet timing",
        description="Runs the whole pipeline on a built-in tiny random-weight model (no download, no torch) and "
        "writes a wav (noise: the model is untrained), then times one dense and one LiteFocus call "
        "of the real-size AudioLDM2 UNet with random weights.",
    )
    d.add_argument("--out-dir", default="outputs", help="where the tiny model's wav goes (default ./outputs)")
    d.add_argument("--seconds", type=float, default=20.0, help="audio length for the real-size UNet timing (default 20)")
    d.add_argument("--batch", type=positive_int, default=2, help="UNet batch of the timing (default 2: one prompt with guidance)")
    d.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the timing (default float32)")
    d.add_argument("--steps", type=positive_int, default=10, help="denoising steps of the tiny end-to-end run (default 10)")
    d.add_argument("--skip-timing", action="store_true", help="only the tiny end-to-end run")
    return parser


# ------------------------------------------------------------------------------------------------ generate


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def cmd_generate(args) -> int:
    from litefocus_jax.tools.batch import (
        Failure,
        Item,
        check_writable,
        item_seed,
        maybe_initialize_distributed,
        parse_prompts,
    )

    if (args.prompt is None) == (args.prompts is None):
        return _fail("give one prompt or --prompts FILE (exactly one of them).")
    from litefocus_jax.tools.fleet import launcher_settings

    try:  # a half-set multi-process launch fails here, before anything loads
        launcher_settings()
    except ValueError as e:
        return _fail(str(e))
    # everything that can be checked without devices, before anything loads or compiles
    try:
        out = check_writable(args.out_dir)
    except OSError as e:
        return _fail(str(e))
    failures: list[Failure] = []
    if args.prompts is not None:
        try:
            items, failures = parse_prompts(
                args.prompts, seconds=args.seconds, negative_prompt=args.negative_prompt, seed=args.seed
            )
        except (OSError, UnicodeDecodeError) as e:
            return _fail(f"cannot read the prompts file {args.prompts}: {e}")
        for f in failures:
            print(f"error: {args.prompts} {f}", file=sys.stderr)
    else:
        if not args.prompt.strip():
            return _fail("the prompt is empty.")
        items = [Item(0, args.prompt, args.negative_prompt, args.seconds, item_seed(args.seed, 0), None, args.transcription)]
    if args.prompts is not None and args.transcription is not None:
        return _fail('--transcription goes with one prompt; with --prompts give each JSONL line a "transcription".')
    from litefocus_jax.pipelines.audioldm2 import parallel

    try:
        mesh_shape = None if args.mesh is None else parallel.parse_mesh_spec(args.mesh)
    except ValueError as e:
        return _fail(str(e))
    from litefocus_jax.commands.models import TINY, WEIGHTS_NOTE, check_model, load_pipeline

    try:
        root = check_model(args.model)  # a snapshot folder, a Hub id (its cache offline), or TINY
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"model: {e}")

    distributed = maybe_initialize_distributed()
    import jax

    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    from litefocus_jax.litefocus.plan import LiteFocusConfig
    from litefocus_jax.tools.batch import local_mesh, run_batch

    try:
        mesh = local_mesh() if mesh_shape is None else parallel.make_mesh(*mesh_shape)
    except ValueError as e:
        return _fail(str(e))
    litefocus = LiteFocusConfig(ratio=args.ratio, seed=args.seed) if args.attention == "litefocus" else None
    start = time.perf_counter()
    try:
        pipe = load_pipeline(root, dtype=args.dtype, scheduler=args.scheduler)
    except (FileNotFoundError, ValueError) as e:
        return _fail(f"model: {e}")
    note = f" ({WEIGHTS_NOTE})" if root == TINY else ""
    if args.phonemes and getattr(pipe, "speech", False):
        pipe.tokenizer_2.phonemize = False  # the transcriptions are phonemes already
    print(f"loaded {args.model}{note} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    # per-item lengths the model cannot take fail now, before compiling
    min_s = pipe.vocoder_upsample_factor * pipe.vae_scale_factor
    good = []
    for it in items:
        if it.seconds < min_s:
            failures.append(
                Failure(
                    f"item {it.index}" + (f" (line {it.line})" if it.line else ""),
                    f"seconds {it.seconds:g} is below one latent frame ({min_s:g} s)",
                )
            )
        elif mesh_shape and (problem := parallel.length_problem(pipe, it.seconds, mesh)):
            failures.append(Failure(f"item {it.index}" + (f" (line {it.line})" if it.line else ""), problem))
        else:
            good.append(it)
    attention = {"type": args.attention}
    if litefocus is not None:
        attention.update(
            ratio=litefocus.ratio,
            seed=litefocus.seed,
            levels=list(litefocus.levels),
            resample=litefocus.resample,
            duplicates=litefocus.duplicates,
        )
    settings = dict(
        model=str(root.resolve()) if Path(args.model).exists() else args.model,
        scheduler=args.scheduler,
        steps=args.steps,
        guidance=args.guidance,
        attention=attention,
        dtype=args.dtype,
        **({"weights": "random"} if root == TINY else {}),
    )
    pi, pc = jax.process_index(), jax.process_count()
    together = parallel.spans_processes(mesh)  # one mesh across the processes: every item in lockstep
    print(
        f"{len(good)} item(s) on {mesh.devices.size} {jax.default_backend()} device(s)"
        + (f", process {pi} of {pc} (items i % {pc} == {pi})" if (distributed or pc > 1) and not together else "")
        + (f", process {pi} of {pc} on one mesh across processes (all items; process 0 writes)" if together else ""),
        file=sys.stderr,
    )
    try:
        result = run_batch(
            pipe,
            good,
            out,
            settings=settings,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            litefocus=litefocus,
            batch_size=args.batch_size,
            mesh=mesh,
            process_index=pi,
            process_count=pc,
            save_npy_too=args.save_npy,
            log=lambda m: print(m, file=sys.stderr),
            progress=not args.no_progress,
            candidates=args.candidates,
        )
    except ValueError as e:  # results of other settings already in --out-dir; a CLAP that cannot re-rank
        return _fail(str(e))
    except KeyboardInterrupt:
        print("interrupted: finished items are in the manifest; run the same command again to resume.", file=sys.stderr)
        return 130
    except RuntimeError as e:  # jax.errors.JaxRuntimeError: a collective lost a process of the shared mesh
        if not together:
            raise
        return _fail(
            f"a process of the mesh across processes is gone ({type(e).__name__}: {str(e)[:300]}); the items "
            "finished so far are in the manifest: run the same command again to resume.",
            code=1,
        )
    failures += result.failed
    if pc > 1 and not together:  # process 0 waits for the others (it hosts JAX's coordination service), then says who wrote what
        from litefocus_jax.tools.batch import read_manifests
        from litefocus_jax.tools.fleet import report_fleet

        missing = report_fleet(out, [it.index for it in good], read_manifests, log=lambda m: print(m, file=sys.stderr))
        known = {f.what for f in failures}
        failures += [Failure(f"item {i}", "missing: no process wrote it") for i in missing if f"item {i}" not in known]
    n = len(result.written)
    rate = f", {n / result.run_seconds:.2f} items/s" if n and result.run_seconds > 0 else ""
    print(
        f"written {n}, skipped (already done) {len(result.skipped)}, failed {len(failures)}"
        + (f", done or held by other runs {len(result.elsewhere)}" if result.elsewhere else "")
        + f"; compile {result.compile_seconds:.1f} s, "
        f"generation {result.run_seconds:.1f} s{rate}; output in {out}{note}",
        file=sys.stderr,
    )
    if failures:
        print("failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------------ demo


def cmd_demo(args) -> int:
    from litefocus_jax.tools.batch import check_writable

    try:
        out = check_writable(args.out_dir)
    except OSError as e:
        return _fail(str(e))
    if not args.skip_timing and (args.seconds < 0.32 or not math.isfinite(args.seconds)):
        return _fail("--seconds must be >= 0.32 (LiteFocus needs compensation tokens).")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from litefocus_jax.utils.io import save_wav

    print(
        "1/2 end to end on a built-in TINY model with RANDOM weights (no download). It is untrained, so the wav is "
        "noise: this checks the machinery (tokenizers, CLAP, T5, GPT2, UNet, VAE, vocoder), not audio quality."
    )
    start = time.perf_counter()
    from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    prompt, seconds = "a dog barks in the rain", 2.56
    result = pipe(prompt, audio_length_in_s=seconds, num_inference_steps=args.steps, seed=0)
    audio = result.audios[0]
    peak = float(np.abs(audio).max()) if np.isfinite(audio).all() else 0.0
    if peak > 0:
        audio = audio / peak * 0.5  # random weights give tiny amplitudes; normalise so the file is audible
    path = save_wav(out / "demo_tiny_random_model.wav", audio, result.sampling_rate)
    print(
        f"wrote {path} ({seconds} s at {result.sampling_rate} Hz, {args.steps} DDIM steps, "
        f"{time.perf_counter() - start:.1f} s incl. compile): noise from an untrained model."
    )
    if args.skip_timing:
        return 0
    from litefocus_jax.tools import demo

    print(
        f"\n2/2 the real-size cvssp/audioldm2 UNet (random weights: timings only) at {args.seconds} s, batch {args.batch}, "
        f"{args.dtype} on {jax.default_backend()} ({jax.devices()[0].device_kind})"
    )
    r = demo.run(args.seconds, args.batch, getattr(jnp, args.dtype), repeats=1)
    demo.print_report(r)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":  # the conversion command owns its arguments and --help
        from litefocus_jax.commands.convert import main as convert_main

        return convert_main(argv[1:])
    if argv and argv[0] == "bench":  # the benchmark harness owns its arguments and --help
        from litefocus_jax.tools.bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "platform-check":  # lowering for TPU/CUDA from any machine; its own --help
        from litefocus_jax.tools.platform_check import main as check_main

        return check_main(argv[1:])
    if argv and argv[0] == "evaluate":  # quality metrics (commands/evaluate.py); its own --help
        from litefocus_jax.commands.evaluate import run as evaluate_main

        return evaluate_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "generate":
        return cmd_generate(args)
    if args.command == "demo":
        return cmd_demo(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
