"""Fine-tune the AudioLDM2 UNet on your own (audio, caption) pairs, with LiteFocus sparse attention on.

    python examples/finetune.py                                   # tiny random model, two synthesised clips, CPU
    python examples/finetune.py --model cvssp/audioldm2 --audio-dir my_clips --steps 2000 --lr 1e-5

The first command needs no download: it synthesises two 1 s clips with captions into a temporary folder, takes
the text encoders (CLAP, Flan-T5, GPT2) of the tiny random-weight pipeline of `litefocus-jax demo`, a tiny VAE
encoder and a two-level tiny UNet (`litefocus_jax.research.training.TINY_UNET_CONFIG`), trains a few steps of the
attention projections and writes a checkpoint. The second loads a real snapshot (a Hub id when online, or a
local folder, diffusers or converted) with `AudioLDM2Pipeline.from_pretrained`, whose VAE carries its encoder.

--audio-dir holds 16 kHz audio files (.wav/.flac/.ogg; other rates are refused with a resampling hint) and
optionally captions.jsonl ({"file": "a.wav", "caption": "..."} per line); without it each caption is the file
name ("dog_barking.wav" -> "dog barking"). Every clip is cropped or padded to --seconds (default 1 s on the
tiny model, 10.24 s, the training length, with --model).

Writes into --out-dir (default ./example_outputs/finetune) the checkpoint folder step-NNNNNN: unet/ (load it
with `litefocus_jax.load_unet(".../unet")`, or copy it over the unet/ folder of a converted snapshot to
generate with it) plus the optimizer state; `--resume DIR/step-NNNNNN` continues exactly where it stopped.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import _common as common

SECONDS, LR = (1.0, 10.24), (1e-3, 1e-5)  # (tiny model, real weights)
CLIPS = {  # synthesised when no --audio-dir is given: file name -> (caption, tone frequencies in Hz)
    "low_hum.wav": ("a steady low electrical hum", (110.0, 220.0, 330.0)),
    "high_whistle.wav": ("a high whistle", (2000.0, 3100.0)),
}


def parse_args(argv):
    p = common.make_parser(__doc__, "finetune")
    p.add_argument("--audio-dir", help="folder of 16 kHz audio files (+ optional captions.jsonl); default: synthesised clips")
    p.add_argument("--steps", type=common.positive_int, default=5, help="optimizer steps (default 5)")
    p.add_argument("--batch-size", type=common.positive_int, default=2, help="clips per step (default 2)")
    p.add_argument(
        "--seconds", type=common.positive_float, help=f"clip length (default {SECONDS[0]:g} tiny, {SECONDS[1]:g} with --model)"
    )
    p.add_argument(
        "--lr", type=common.positive_float, help=f"AdamW learning rate (default {LR[0]:g} tiny, {LR[1]:g} with --model)"
    )
    p.add_argument(
        "--trainable",
        choices=("attention", "all"),
        default="attention",
        help="UNet parameters to train: the attention projections (default; compiles ~3x faster on CPU) or all",
    )
    p.add_argument("--attention", choices=("litefocus", "dense"), default="litefocus", help="attention while training")
    p.add_argument("--ratio", type=float, default=0.1, help="LiteFocus compensation ratio in (0, 1] (default 0.1)")
    p.add_argument("--resume", help="a checkpoint folder written by this script")
    args = p.parse_args(argv)
    if not 0 < args.ratio <= 1:
        p.error("--ratio must lie in (0, 1]")
    common.fill_defaults(args, seconds=SECONDS, lr=LR)
    return args


def synthesise_clips(folder: Path, seconds: float) -> None:
    """Write the CLIPS as 16 kHz wavs (tones with a slow tremolo and a little noise) plus captions.jsonl."""
    import numpy as np

    from litefocus_jax.utils.io import save_wav

    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(0)
    for name, (_, freqs) in CLIPS.items():
        tone = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate(freqs))
        wave = 0.3 * tone / np.abs(tone).max() * (0.75 + 0.25 * np.sin(2 * np.pi * 3 * t)) + 0.003 * rng.standard_normal(t.size)
        save_wav(folder / name, wave.astype(np.float32), 16000)
    lines = [json.dumps({"file": name, "caption": caption}) for name, (caption, _) in CLIPS.items()]
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")


def load_models(args):
    """(pipeline for text encoding, UNet to train, VAE with its encoder)."""
    from flax import nnx

    pipe, tiny = common.load_pipeline(args)
    if tiny:
        from litefocus_jax.models.autoencoder_kl import AutoencoderKL
        from litefocus_jax.models.unet_audioldm2 import init_unet
        from litefocus_jax.research.training import TINY_UNET_CONFIG

        # the tiny pipeline's VAE is decoder-only; an encoder of the same geometry (random weights) stands in
        vae = AutoencoderKL(nnx.merge(*pipe.modules["vae"]).config, with_encoder=True, rngs=nnx.Rngs(args.seed))
        return pipe, init_unet(TINY_UNET_CONFIG, seed=args.seed), vae
    unet, vae = nnx.merge(*pipe.modules["unet"]), nnx.merge(*pipe.modules["vae"])
    if vae.encoder is None:
        common.die(f"--model {args.model}: the pipeline's VAE has no encoder; load it with load_vae(..., with_encoder=True).")
    return pipe, unet, vae


def main(argv=None) -> int:
    args = parse_args(argv)
    from litefocus_jax.features.audio import check_audio_files, read_audio_folder

    out = common.prepare_out_dir(args.out_dir)
    try:  # everything checkable without models, before anything loads or compiles
        if args.audio_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="finetune-clips-")
            audio_dir = Path(tmp.name)
            synthesise_clips(audio_dir, args.seconds)
        else:
            audio_dir = Path(args.audio_dir)
        files, captions = read_audio_folder(audio_dir)
        check_audio_files(files)
    except (OSError, ValueError) as e:
        common.die(str(e))
    if args.batch_size > len(files):
        common.die(f"--batch-size {args.batch_size} is more than the {len(files)} clips in {audio_dir}.")
    if args.resume and not (Path(args.resume) / "train_state.json").is_file():
        common.die(f"--resume {args.resume}: not a checkpoint folder of this script.")

    import numpy as np

    from litefocus_jax.features.audio import audio_files_to_latents
    from litefocus_jax.litefocus.plan import LiteFocusConfig
    from litefocus_jax.research.training import TrainConfig, Trainer
    from litefocus_jax.research.training_data import LatentTextDataset, encode_captions

    start = time.perf_counter()
    pipe, unet, vae = load_models(args)
    latents = audio_files_to_latents(files, vae, seconds=args.seconds)
    data = LatentTextDataset(latents, *encode_captions(pipe, captions))
    print(
        f"{len(files)} clips of {args.seconds:g} s from {audio_dir} -> latents {latents.shape}, text states "
        f"{data.encoder_hidden_states.shape} + {data.encoder_hidden_states_1.shape} ({time.perf_counter() - start:.1f} s)"
    )

    litefocus = LiteFocusConfig(ratio=args.ratio, seed=args.seed) if args.attention == "litefocus" else None
    trainer = Trainer(unet, TrainConfig(learning_rate=args.lr, trainable=args.trainable, litefocus=litefocus, seed=args.seed))
    try:
        state = trainer.restore(args.resume) if args.resume else trainer.init_state()
    except (OSError, ValueError) as e:  # a checkpoint of another model, subset or optimizer
        common.die(f"--resume {args.resume}: {e}")
    plan = trainer.plan(latents.shape)
    sparse = (
        "dense" if plan is None else f"LiteFocus at levels {[lp.level for lp in plan.levels]} ({plan.num_calls} sparse calls)"
    )
    print(
        f"training {len(state.params)} of {len(state.params) + len(state.frozen)} UNet tensors, {sparse}, lr {args.lr:g}, "
        f"from step {state.step}"
    )

    batches = data.batches(args.batch_size, seed=args.seed, start_step=state.step)
    for _ in range(args.steps):
        tick = time.perf_counter()
        state, metrics = trainer.step(state, next(batches))
        loss = float(metrics["loss"])
        print(
            f"step {state.step}: loss {loss:.4f}, grad norm {float(metrics['grad_norm']):.3f} ({time.perf_counter() - tick:.2f} s)"
        )
        if not np.isfinite(loss):
            print("error: the loss is not finite; lower --lr.", file=sys.stderr)
            return 1
    path = trainer.save(out / f"step-{state.step:06d}", state, overwrite=True)
    print(
        f"checkpoint {path} ({time.perf_counter() - start:.1f} s in all): litefocus_jax.load_unet('{path / 'unet'}') loads "
        f"the fine-tuned UNet; --resume {path} continues."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
