"""`python -m litefocus_jax` subcommands as subprocesses: help texts, generate (and resume), convert, demo,
and bad inputs that must fail before anything compiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from tiny_pipeline import convert_as_release_0_1, save_tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "litefocus_jax", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    proc.seconds = time.perf_counter() - start
    return proc


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("cli") / "tiny")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "xla_cache"


def test_help_texts():
    top = cli("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("generate", "convert", "demo", "bench"))
    gen = cli("generate", "--help")
    assert gen.returncode == 0
    for option in (
        "--prompts",
        "--out-dir",
        "--model",
        "--seconds",
        "--steps",
        "--scheduler",
        "--guidance",
        "--seed",
        "--attention",
        "--ratio",
        "--dtype",
        "--batch-size",
        "--negative-prompt",
        "--candidates",
        "ddim",
        "dpmsolver++",
        "litefocus",
    ):
        assert option in gen.stdout, option
    conv = cli("convert", "--help")
    assert conv.returncode == 0 and "--dtype" in conv.stdout and "--overwrite" in conv.stdout
    demo = cli("demo", "--help")
    assert demo.returncode == 0 and "--seconds" in demo.stdout and "--skip-timing" in demo.stdout
    bench = cli("bench", "--help")
    assert bench.returncode == 0 and all(o in bench.stdout for o in ("--scopes", "--jax-impls", "--check-targets"))


def test_generate_one_prompt_then_resume(snapshot, tmp_path, cache):
    args = (
        "generate",
        "a dog barks",
        "--model",
        snapshot,
        "--out-dir",
        tmp_path,
        "--seconds",
        "0.064",
        "--steps",
        "2",
        "--attention",
        "litefocus",
        "--ratio",
        "0.5",
        "--scheduler",
        "dpmsolver++",
        "--cache-dir",
        cache,
    )
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "compiled for 0.064 s items" in first.stderr and "written 1" in first.stderr, repr(first.stderr[-1500:])
    (rec,) = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert rec["prompt"] == "a dog barks" and rec["scheduler"] == "dpmsolver++" and rec["attention"]["type"] == "litefocus"
    assert rec["attention"]["ratio"] == 0.5 and rec["steps"] == 2 and rec["seconds"] == 0.064
    data, rate = sf.read(tmp_path / rec["file"])
    assert rate == 16000 and data.shape == (1024,)
    again = cli(*args)
    assert again.returncode == 0 and "written 0, skipped (already done) 1" in again.stderr and "compiled" not in again.stderr
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 1


def test_generate_candidates_keeps_the_clap_best(snapshot, tmp_path, cache):
    """--candidates 2 on 3 items with --batch-size 4: batches of 2 items x 2 candidates (the last one padded). The
    manifest records every candidate's CLAP score, the kept one is the best, and `pipe(prompt, seed=<its seed>,
    num_candidates=2)` gives the same waveform."""
    import numpy as np

    from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog barks\nrain\nan owl hoots\n")
    out = tmp_path / "out"
    args = ("generate", "--prompts", prompts, "--model", snapshot, "--out-dir", out, "--seconds", "0.064", "--steps", "2")
    proc = cli(*args, "--candidates", "2", "--batch-size", "4", "--save-npy", "--cache-dir", cache)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    for rec in records:
        scores = rec["candidate_scores"]
        assert rec["candidates"] == 2 and len(scores) == 2 and rec["clap_score"] == max(scores) == scores[rec["candidate"]]
    rec = records[-1]  # the padded batch
    again = AudioLDM2Pipeline.from_pretrained(snapshot)(
        rec["prompt"], seed=rec["seed"], num_candidates=2, audio_length_in_s=0.064, num_inference_steps=2
    )
    assert again.candidate_indices[0] == rec["candidate"] and abs(again.clap_scores[0] - rec["clap_score"]) < 1e-5
    np.testing.assert_allclose(np.load(out / rec["file"].replace(".wav", ".npy")), again.audios[0], rtol=0, atol=1e-5)
    other = cli(*args, "--candidates", "3", "--cache-dir", cache)  # resuming with other settings is refused
    assert other.returncode == 2 and "different ['candidates']" in other.stderr and "compiled" not in other.stderr


def test_candidates_on_a_text_only_clap_fail_before_compiling(snapshot, tmp_path):
    """A snapshot converted by 0.1 (text-only CLAP, which still generates: test_rerank.py): --candidates asks to
    re-convert, before anything compiles."""
    convert_as_release_0_1(snapshot, tmp_path / "old")
    proc = cli(
        "generate",
        "a dog barks",
        "--model",
        tmp_path / "old",
        "--out-dir",
        tmp_path / "out",
        "--seconds",
        "0.064",
        "--candidates",
        "2",
    )
    assert proc.returncode == 2 and "Re-convert" in proc.stderr and "compiled" not in proc.stderr, proc.stderr


def test_convert(snapshot, tmp_path):
    proc = cli("convert", snapshot, tmp_path / "converted")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "converted" / "model_index.json").is_file() and "converted unet" in proc.stdout
    bad = cli("convert", tmp_path / "nope", tmp_path / "x")
    assert bad.returncode == 1 and "error:" in bad.stderr


def test_demo_small(tmp_path):
    proc = cli("demo", "--out-dir", tmp_path, "--steps", "2", "--skip-timing")
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM weights" in proc.stdout and "noise" in proc.stdout
    data, rate = sf.read(tmp_path / "demo_tiny_random_model.wav")
    assert rate == 16000 and data.shape == (int(2.56 * 16000),) and abs(data).max() > 0


@pytest.mark.parametrize(
    "extra,code,message",
    [
        (("--attention", "sparse"), 2, "invalid choice: 'sparse'"),
        (("--scheduler", "euler"), 2, "invalid choice: 'euler'"),
        (("--dtype", "float16"), 2, "invalid choice: 'float16'"),
        (("--ratio", "0"), 2, "--ratio"),
        (("--steps", "0"), 2, "--steps"),
        (("--candidates", "0"), 2, "--candidates"),
        (("--model", "{tmp}/no_such_model"), 2, "model:"),
        (("--out-dir", "{tmp}/a_file/sub"), 2, "not writable"),
        (("--prompts", "{tmp}/missing.txt"), 2, "cannot read the prompts file"),
    ],
)
def test_bad_inputs_fail_before_compiling(snapshot, tmp_path, extra, code, message):
    (tmp_path / "a_file").write_text("")
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    prompt = [] if "--prompts" in extra else ["a dog barks"]
    proc = cli("generate", *prompt, "--model", snapshot, "--out-dir", tmp_path / "out", "--seconds", "0.064", *extra)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "compiled" not in proc.stderr and "loaded" not in proc.stderr  # nothing loaded, nothing compiled
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
