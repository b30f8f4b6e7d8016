"""Sharded, resumable batch generation over every local device: a TPU slice, a multi-GPU host, or 8 fake CPU devices.

    python examples/sharded_batch.py                              # tiny random-weight model on 8 fake CPU devices
    python examples/sharded_batch.py --model cvssp/audioldm2      # real weights, 10 s items, this host's devices

It writes a prompts file (prompts.jsonl) into --out-dir and hands it to the library's batch engine, the one
behind `litefocus-jax generate --prompts` (`litefocus_jax.tools.batch.parse_prompts` + `run_batch`, which calls
`AudioLDM2Pipeline.generate_items` on a `jax.sharding.Mesh`): parameters replicated, each batch split along a
"data" axis over the devices and padded to a multiple of the device count (padding is never written). Every
item gets its own wav and a manifest.jsonl line. Then it runs the same batch again: every item is found in the
manifest and skipped, which is how an interrupted run resumes (Ctrl-C it and run the command again).
Item i's audio depends only on its own prompt and seed, not on the device count or batchmates.

Fake devices: on a CPU-only machine this script sets XLA_FLAGS=--xla_force_host_platform_device_count=8
before jax is imported (XLA reads the flag once, at backend start-up), so the CPU shows up as 8 devices and the
sharding really runs. It leaves XLA_FLAGS alone when it already sets a host device count, when JAX_PLATFORMS
selects something other than the CPU, or when a GPU/TPU jax plugin is installed. --host-devices picks the count.

Multi-host TPU (a v4-32 or v5e-16 slice: several hosts, one process per host): run the same command on every
host at once, e.g. `gcloud compute tpus tpu-vm ssh NAME --worker=all --command "cd repo && python
examples/sharded_batch.py --model cvssp/audioldm2 --out-dir /shared/out"`. `maybe_initialize_distributed()`
(litefocus_jax/tools/batch.py, tools/fleet.py) sees the pod (TPU_WORKER_HOSTNAMES), or a launcher (JAX_COORDINATOR_ADDRESS with
JAX_NUM_PROCESSES and JAX_PROCESS_ID, SLURM with several tasks, Open MPI), and calls
`jax.distributed.initialize()` before any device is touched. Process k of n then generates the items i with
i % n == k on a mesh of its own local devices, with no cross-host traffic, then any item nobody has
claimed (a dead or slow peer's), and writes manifest.pKKKKK-of-NNNNN.jsonl; a rerun resumes every process's work. Give every host the same prompts file; an
--out-dir on a shared file system (NFS, gcsfuse) collects every host's output in one place. Multi-GPU
hosts run the same way: one process per host, all its GPUs in the mesh.

Without --model the weights are random, so the wavs are noise (and very quiet: the batch engine writes them
as generated). Writes into --out-dir (default ./example_outputs/sharded_batch): prompts.jsonl, one wav per
item, manifest.jsonl.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys

import _common as common

SECONDS, STEPS = (1.0, 10.0), (2, 200)  # (tiny model, real weights)
# Long enough that the tiny model's 32-token T5 tokenizer cuts them all to one length: each item's text is
# encoded alone at its own token length, so one length means one text-encoder compile.
PROMPTS = [
    "a steady rain on a tin roof, distant thunder rolling in",
    "a dog barks twice in a quiet street while a car passes by",
    {"prompt": "birds sing at dawn in a forest, leaves rustle in the wind", "seed": 1234},
    {"prompt": "a jazz trio plays softly in a small and crowded club", "negative_prompt": "low quality"},
    "waves crash on a pebble beach as seagulls call overhead",
    "a steam train passes a level crossing, its whistle blowing",
]


def parse_args(argv):
    parser = common.make_parser(__doc__, "sharded_batch")
    parser.add_argument(
        "--prompts",
        default=None,
        help="your own prompts file: plain text or JSONL as `litefocus-jax generate --prompts` reads it "
        "(default: write a built-in one of 6 prompts to OUT_DIR/prompts.jsonl)",
    )
    common.add_generation_args(
        parser, seconds=SECONDS, steps=STEPS, prompt=False, seconds_help="length of the items whose prompts line gives none"
    )
    parser.add_argument(
        "--attention", choices=("dense", "litefocus"), default="litefocus", help="self-attention (default litefocus)"
    )
    parser.add_argument(
        "--batch-size",
        type=common.positive_int,
        default=None,
        help="items per batch, rounded up to a multiple of the device count (default: the device count)",
    )
    parser.add_argument(
        "--host-devices",
        type=common.positive_int,
        default=8,
        help="fake CPU devices when the backend is the CPU (default 8; 1 = none)",
    )
    args = parser.parse_args(argv)
    common.fill_defaults(args, seconds=SECONDS, steps=STEPS)
    return args


def accelerator_expected() -> bool:
    """Whether jax will pick a GPU/TPU: JAX_PLATFORMS names one, or a GPU/TPU plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] != "cpu"
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    return any(n.startswith(("jax-cuda", "jax-rocm", "libtpu")) for n in names)


def fake_cpu_devices(count: int) -> None:
    """Ask XLA for `count` host devices; must run before jax is imported (the flag is read once)."""
    if "jax" in sys.modules:
        raise RuntimeError("fake_cpu_devices must run before jax is imported.")
    flags = os.environ.get("XLA_FLAGS", "")
    if count > 1 and "xla_force_host_platform_device_count" not in flags and not accelerator_expected():
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def prompts_file(args, out_dir):
    if args.prompts is not None:
        return args.prompts
    from litefocus_jax.utils.io import atomic_file

    text = "".join(json.dumps(p if isinstance(p, dict) else {"prompt": p}) + "\n" for p in PROMPTS)
    return atomic_file(out_dir / "prompts.jsonl", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def manifest_settings(args, litefocus) -> dict:
    """The run-wide manifest fields, as `litefocus-jax generate` records them (a rerun must match them)."""
    attention = {"type": args.attention}
    if litefocus is not None:
        attention.update(
            ratio=litefocus.ratio,
            seed=litefocus.seed,
            levels=list(litefocus.levels),
            resample=litefocus.resample,
            duplicates=litefocus.duplicates,
        )
    return dict(
        model=args.model or "tiny-random",
        scheduler="ddim",
        steps=args.steps,
        guidance=args.guidance,
        attention=attention,
        dtype=args.dtype,
    )


def run_once(pipe, items, out_dir, args, litefocus, mesh, label: str):
    import jax

    from litefocus_jax.tools.batch import run_batch

    result = run_batch(
        pipe,
        items,
        out_dir,
        settings=manifest_settings(args, litefocus),
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        litefocus=litefocus,
        batch_size=args.batch_size or mesh.devices.size,
        mesh=mesh,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        progress=False,
    )
    print(
        f"{label}: written {len(result.written)}, skipped (already done) {len(result.skipped)}, "
        f"failed {len(result.failed)}; compile {result.compile_seconds:.1f} s, generation {result.run_seconds:.1f} s"
    )
    for failure in result.failed:
        print(f"  failed {failure}", file=sys.stderr)
    return result


def print_manifest(out_dir) -> None:
    from litefocus_jax.tools.batch import read_manifests

    records = read_manifests(out_dir)
    print(f"\nmanifest ({len(records)} item(s) in {out_dir}/manifest*.jsonl):")
    for index, rec in sorted(records.items()):
        print(
            f"  {index}: seed {rec['seed']:>10d}, {rec['seconds']:g} s, {rec['samples']} samples -> {rec['file']}"
            f"  ({rec['prompt']!r})"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    fake_cpu_devices(args.host_devices)
    from litefocus_jax.litefocus.plan import LiteFocusConfig
    from litefocus_jax.tools.batch import (
        local_mesh,
        maybe_initialize_distributed,
        parse_prompts,
    )

    out_dir = common.prepare_out_dir(args.out_dir)
    source = prompts_file(args, out_dir)
    try:
        items, bad_lines = parse_prompts(source, seconds=args.seconds, negative_prompt="", seed=args.seed)
    except (OSError, UnicodeDecodeError) as e:
        common.die(f"cannot read the prompts file {source}: {e}")
    for failure in bad_lines:
        print(f"error: {source} {failure}", file=sys.stderr)
    if not items:
        common.die(f"{source} holds no usable prompt.")
    maybe_initialize_distributed()  # before anything touches the devices
    pipe, _ = common.load_pipeline(args)
    litefocus = LiteFocusConfig(seed=args.seed) if args.attention == "litefocus" else None
    mesh = local_mesh()
    import jax

    print(
        f"{len(items)} item(s) from {source}; mesh {dict(mesh.shape)} over {mesh.devices.size} {jax.default_backend()} "
        f"device(s); process {jax.process_index()} of {jax.process_count()}; attention {args.attention}"
    )
    first = run_once(pipe, items, out_dir, args, litefocus, mesh, "first call ")
    second = run_once(pipe, items, out_dir, args, litefocus, mesh, "second call")
    print(f"resumable: the second call skipped {len(second.skipped)} finished item(s) and generated {len(second.written)}")
    print_manifest(out_dir)
    return 1 if bad_lines or first.failed or second.failed else 0


if __name__ == "__main__":
    sys.exit(main())
