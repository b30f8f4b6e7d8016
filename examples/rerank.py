"""CLAP re-ranking: generate N candidates per prompt, order them by CLAP text-audio similarity, keep the best.

    python examples/rerank.py                              # tiny random-weight model, 1 s, 2 steps (seconds on a CPU)
    python examples/rerank.py --model cvssp/audioldm2      # real weights: 10 s, 200 DDIM steps, 3 candidates
    python examples/rerank.py --model cvssp/audioldm2 --candidates 4 --prompt "a cat meows" --prompt "rain"

AudioLDM2's released protocol generates 3 candidates per prompt and keeps the one its CLAP model ranks best. Here:

  out = pipe(prompts, num_waveforms_per_prompt=N)   # every candidate, each prompt's best first, out.clap_scores
  best = pipe(prompts, num_candidates=N)            # only the best per prompt (the same waveform as above)

The score is the cosine similarity between the prompt's CLAP text embedding and the audio's CLAP embedding
(resampled to 48 kHz; a clip longer than CLAP's 10 s window is scored by the mean of its windows' embeddings).
Each prompt's candidates are ranked among themselves. Without --model the weights are random: the wavs are noise
(peak-normalised so they are audible) and the scores mean nothing.

Writes into --out-dir (default ./example_outputs/rerank): p<i>_c<j>.wav for every candidate (j = generation order),
p<i>_best.wav, ranking.json (every candidate's score, the order, the kept one).
"""

from __future__ import annotations

import sys

import _common as common

SECONDS, STEPS = (1.0, 10.0), (2, 200)  # (tiny model, real weights)
PROMPTS = ("a dog barks in the distance", "rain on a tin roof")


def parse_args(argv):
    parser = common.make_parser(__doc__, "rerank")
    common.add_generation_args(parser, seconds=SECONDS, steps=STEPS, prompt=False)
    parser.add_argument(
        "--prompt", action="append", default=None, help=f"a text prompt; repeat for several (default: {' / '.join(PROMPTS)})"
    )
    parser.add_argument("--candidates", type=common.positive_int, default=3, help="candidates per prompt (default 3)")
    args = parser.parse_args(argv)
    common.fill_defaults(args, seconds=SECONDS, steps=STEPS)
    args.prompt = args.prompt or list(PROMPTS)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np

    out_dir = common.prepare_out_dir(args.out_dir)
    pipe, tiny = common.load_pipeline(args)
    n = args.candidates
    call = dict(audio_length_in_s=args.seconds, num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed)
    print(f"{len(args.prompt)} prompt(s) x {n} candidates, {args.seconds:g} s, {args.steps} steps ...", flush=True)
    try:
        ranked, timing = common.timed_calls(pipe, args.prompt, 0, num_waveforms_per_prompt=n, **call)
    except ValueError as e:  # e.g. a text_encoder converted by litefocus-jax 0.1: re-convert it
        common.die(str(e))
    best = pipe(args.prompt, num_candidates=n, **call)  # the released protocol: only the best comes back
    if not np.array_equal(best.audios, ranked.audios[::n]):
        common.die("num_candidates did not keep the top-ranked candidate")  # never expected: the same noise per candidate

    report = dict(
        model=args.model or "tiny-random",
        tiny_random_weights=tiny,
        seconds=args.seconds,
        steps=args.steps,
        seed=args.seed,
        candidates=n,
        first_call_s=timing["first_call_s"],
        prompts=[],
    )
    for p, prompt in enumerate(args.prompt):
        rows = slice(p * n, (p + 1) * n)
        order = [int(c) for c in ranked.candidate_indices[rows]]
        scores = {c: float(s) for c, s in zip(order, ranked.clap_scores[rows])}
        for c, audio in zip(order, ranked.audios[rows]):
            common.save_audio(out_dir / f"p{p}_c{c}.wav", audio, ranked.sampling_rate, tiny)
        common.save_audio(out_dir / f"p{p}_best.wav", best.audios[p], best.sampling_rate, tiny)
        print(f"\n{prompt!r}: candidates best first (generation index: CLAP score)")
        print("  " + ", ".join(f"c{c}: {scores[c]:+.4f}" for c in order) + f"  -> kept c{order[0]} as p{p}_best.wav")
        report["prompts"].append(
            dict(
                prompt=prompt,
                scores=[scores[c] for c in range(n)],  # generation order
                order=order,
                best=order[0],
                best_score=float(best.clap_scores[p]),
                best_wav=f"p{p}_best.wav",
            )
        )
    if tiny:
        print("\n(random weights: the scores say nothing about the audio)")
    print(f"wrote {common.write_json(out_dir / 'ranking.json', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
