"""`litefocus-jax evaluate`: the paper's quality metrics (audioldm_eval 0.0.3 definitions) in JAX.

    # once: the official evaluation checkpoints (pickled torch files; needs torch) -> safetensors
    litefocus-jax evaluate convert --vggish vggish-10086976.pth --panns Cnn14_16k_mAP=0.438.pth --out eval-networks
    # score a folder of generated wavs against references (KL pairs by file name) and prompts (CLAP score)
    litefocus-jax evaluate GENERATED --reference REFERENCE --prompts captions.csv --networks eval-networks \\
        --clap cvssp/audioldm2
    # generate dense and LiteFocus over a prompt list at several lengths (resumable), score all -> the paper's table
    litefocus-jax evaluate --generate --prompts audiocaps_test.csv --model cvssp/audioldm2 --seconds 10 20 40 \\
        --litefocus-ratios 0.1 --reference audiocaps_test_wavs --networks eval-networks --out-dir eval-runs

`--random-networks tiny|full` uses random evaluation networks instead (tests, timing); `--model tiny` the random tiny
generator. Every output made with random weights says so. Exit status: 0 done; 2 bad arguments or setup.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from litefocus_jax.utils.cli_args import finite_float, positive_float, positive_int, seed_value

LONG_AUDIO_HELP = (
    "how clips longer than --window-seconds are compared with 10 s references: 'first' = their first window only; "
    "'mean' = per-file features averaged over evenly spaced windows (VGGish: all examples of the clip) (default first)"
)


def _fail(msg: str) -> int:
    print(f"litefocus-jax evaluate: error: {msg}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="litefocus-jax evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("generated", nargs="?", help="folder of generated wavs to score (not with --generate)")
    p.add_argument("--reference", metavar="DIR", help="folder of reference wavs (FAD, FD, KL, KID need it; KL pairs by name)")
    p.add_argument("--prompts", metavar="FILE", help="CSV (audiocap_id,caption) or JSONL prompts: the CLAP score's text")
    p.add_argument("--networks", metavar="DIR", help="converted evaluation networks (`evaluate convert --out DIR`)")
    p.add_argument(
        "--random-networks", choices=("tiny", "full"), help="random evaluation networks instead (numbers mean nothing)"
    )
    p.add_argument(
        "--clap",
        metavar="SNAPSHOT",
        help="AudioLDM2 snapshot whose CLAP scores text-audio agreement, or 'tiny' "
        "(default with --generate: --model's own CLAP; without: no CLAP score)",
    )
    p.add_argument("--sample-rate", type=int, choices=(16000, 32000), default=16000, help="Cnn14 variant (default 16000)")
    p.add_argument("--long-audio", choices=("first", "mean"), default="first", help=LONG_AUDIO_HELP)
    p.add_argument("--window-seconds", type=positive_float, default=10.0, help="reference length for --long-audio (default 10)")
    p.add_argument("--eval-batch-size", type=positive_int, default=16, help="clips per network call (default 16)")
    p.add_argument("--out-dir", help="where results.json/.md go (default GENERATED.eval, or eval-runs with --generate)")
    g = p.add_argument_group("--generate: generate, then score every (length, setting)")
    g.add_argument("--generate", action="store_true", help="generate dense and LiteFocus clips for --prompts first")
    g.add_argument("--model", default="cvssp/audioldm2", help="snapshot folder, Hub id or 'tiny' (default cvssp/audioldm2)")
    g.add_argument("--seconds", type=positive_float, nargs="+", default=[10.0], help="lengths to generate (default 10)")
    g.add_argument("--litefocus-ratios", type=finite_float, nargs="*", default=[0.1], help="LiteFocus settings (default 0.1)")
    g.add_argument("--no-dense", action="store_true", help="skip the dense setting")
    g.add_argument("--steps", type=positive_int, default=200, help="denoising steps (default 200)")
    g.add_argument("--guidance", type=finite_float, default=3.5, help="guidance scale (default 3.5)")
    g.add_argument("--scheduler", choices=("ddim", "dpmsolver++"), default="ddim")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    g.add_argument("--seed", type=seed_value, default=0, help="global seed (item i: batch.item_seed(seed, i))")
    g.add_argument("--negative-prompt", default="", help="negative prompt for every item (default none)")
    g.add_argument("--batch-size", type=positive_int, default=4, help="generation batch (default 4)")
    g.add_argument("--no-plot", action="store_true", help="no results.png")
    return p


def build_convert_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="litefocus-jax evaluate convert",
        description="Convert the official evaluation checkpoints (pickled torch files, read with "
        "torch.load(weights_only=True); needs torch) to safetensors folders under --out.",
    )
    p.add_argument("--vggish", metavar="PTH", help="vggish-10086976.pth (harritaylor/torchvggish release v0.1)")
    p.add_argument("--panns", metavar="PTH", nargs="+", default=[], help="Cnn14_16k_mAP=0.438.pth and/or Cnn14_mAP=0.431.pth")
    p.add_argument("--out", required=True, help="output folder (gets vggish/, cnn14_16k/, cnn14_32k/)")
    return p


def cmd_convert(argv: Sequence[str]) -> int:
    from litefocus_jax.models import panns, vggish

    args = build_convert_parser().parse_args(argv)
    if not args.vggish and not args.panns:
        return _fail("give --vggish and/or --panns checkpoint files.")
    out = Path(args.out)
    jobs = [(args.vggish, out / "vggish", lambda s, d: vggish.convert_vggish_checkpoint(s, d))] if args.vggish else []
    for src in args.panns:
        sr = 16000 if "16k" in Path(src).name else 32000
        jobs.append((src, out / f"cnn14_{sr // 1000}k", lambda s, d, sr=sr: panns.convert_cnn14_checkpoint(s, d, sr)))
    for src, dst, convert in jobs:
        if dst.exists():
            return _fail(f"{dst} already exists; remove it or choose another --out.")
        if not Path(src).is_file():
            return _fail(f"{src} does not exist.")
    for src, dst, convert in jobs:
        try:
            convert(src, dst)
        except (ImportError, ValueError, FileNotFoundError) as e:
            return _fail(str(e))
        print(f"{src} -> {dst}")
    return 0


def _networks(args, clap):
    from litefocus_jax.evaluation.features import load_networks, random_networks

    if args.random_networks:
        return random_networks(args.sample_rate, size=args.random_networks, clap=clap, batch_size=args.eval_batch_size)
    return load_networks(*_network_folders(args), clap, batch_size=args.eval_batch_size)


def _network_folders(args) -> tuple[Path, Path]:
    """The converted VGGish and Cnn14 folders under --networks; a clear error (before anything loads) when absent."""
    root = Path(args.networks)
    folders = root / "vggish", root / f"cnn14_{args.sample_rate // 1000}k"
    for f in folders:
        if not (f / "config.json").is_file():
            raise FileNotFoundError(f"{f} is missing: convert the official checkpoints with `litefocus-jax evaluate convert`.")
    return folders


def _clap(spec: str | None, pipe=None, source: str = ""):
    from litefocus_jax.commands.models import check_model
    from litefocus_jax.evaluation.features import clap_from_pipeline, load_clap_parts, tiny_clap_parts

    if spec is None and pipe is not None:
        return clap_from_pipeline(pipe, source)
    if spec is None:
        return None
    resolved = check_model(spec)
    return tiny_clap_parts() if resolved == "tiny" else load_clap_parts(resolved)


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "convert":
        return cmd_convert(argv[1:])
    args = build_parser().parse_args(argv)
    from litefocus_jax.evaluation.audio import list_audio
    from litefocus_jax.evaluation.report import read_prompts

    if bool(args.networks) == bool(args.random_networks):
        return _fail("give exactly one of --networks DIR (converted checkpoints) or --random-networks tiny|full.")
    if args.generate == bool(args.generated):
        return _fail("give a GENERATED folder to score, or --generate (with --prompts) to generate first.")
    try:
        prompts = read_prompts(args.prompts) if args.prompts else None
        reference = list_audio(args.reference) if args.reference else None
        generated = list_audio(args.generated) if args.generated else None
        if args.networks:
            _network_folders(args)
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    if args.generate:
        return _run_generate(args, prompts, reference)
    try:
        nets = _networks(args, _clap(args.clap))
    except (FileNotFoundError, ValueError, ImportError) as e:
        return _fail(str(e))
    from litefocus_jax.evaluation.report import RANDOM_WARNING, write_report
    from litefocus_jax.evaluation.scoring import score_folders

    row = score_folders(
        generated, reference, dict(prompts) if prompts else None, nets, policy=args.long_audio, window_s=args.window_seconds
    )
    random_parts = nets.random_parts()
    result = {
        "warning": RANDOM_WARNING.format(what=" and ".join(random_parts)) if random_parts else None,
        "weights_random": bool(random_parts),
        "generated": str(args.generated),
        "reference": args.reference,
        "long_audio": args.long_audio,
        "window_seconds": args.window_seconds,
        "sample_rate": nets.sample_rate,
        "networks": nets.describe(),
        "rows": [row],
    }
    out = Path(args.out_dir or f"{str(args.generated).rstrip('/')}.eval")
    for path in write_report(out, result):
        print(path)
    print((Path(out) / "results.md").read_text())
    return 0


def _run_generate(args, prompts, reference) -> int:
    from litefocus_jax.commands.models import check_model, load_pipeline
    from litefocus_jax.evaluation.driver import parse_settings

    if prompts is None:
        return _fail("--generate needs --prompts FILE (CSV audiocap_id,caption or JSONL).")
    try:
        settings = parse_settings(args.litefocus_ratios, dense=not args.no_dense)
        resolved = check_model(args.model)
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    out = Path(args.out_dir or "eval-runs")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _fail(f"--out-dir {out}: {e}")
    tiny = resolved == "tiny"
    try:
        pipe = load_pipeline(resolved, dtype=args.dtype, scheduler=args.scheduler)
        clap = _clap(args.clap, pipe, "tiny (RANDOM weights)" if tiny else str(resolved))
        nets = _networks(args, clap)
    except (FileNotFoundError, ValueError, ImportError) as e:
        return _fail(str(e))
    model = "tiny (RANDOM weights)" if tiny else str(resolved)
    try:
        result = _generate(args, pipe, prompts, out, nets, settings, reference, model, tiny)
    except ValueError as e:  # e.g. --out-dir holds results of other generation settings (the batch generator says which)
        return _fail(str(e))
    print((out / "results.md").read_text())
    return 0 if result["rows"] else 2


def _generate(args, pipe, prompts, out, nets, settings, reference, model, tiny):
    from litefocus_jax.evaluation.driver import generate_and_score

    return generate_and_score(
        pipe,
        prompts,
        out,
        nets,
        lengths=args.seconds,
        settings=settings,
        reference=reference,
        run_settings=dict(model=model, scheduler=args.scheduler, dtype=args.dtype),
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        negative_prompt=args.negative_prompt,
        batch_size=args.batch_size,
        policy=args.long_audio,
        window_s=args.window_seconds,
        generator_random=tiny,
        plot=not args.no_plot,
        log=lambda m: print(m, file=sys.stderr),
    )
