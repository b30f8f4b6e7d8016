"""Every examples/*.py run as a user runs it: `python examples/NAME.py --out-dir DIR`, a subprocess on the tiny
random-weight model (no download). The glob picks up new examples by itself; names starting with "_" are helpers.

Examples with a checker below get their outputs checked in detail; any other must exit 0 and write something.
Most of an example's time on the tiny model is XLA compiling, which runs on one core: the runs start together,
two at a time, and share one fresh persistent XLA cache, so a program one example compiled is loaded by the next.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
OWN = ("attention_analysis.py", "custom_litefocus.py", "finetune.py", "long_audio.py", "rerank.py", "sharded_batch.py")
TIMEOUT_S = 900  # a hung example fails instead of stalling the suite
JOBS = 2


def run_example(name: str, *args, cache: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", LITEFOCUS_JAX_CACHE=str(cache), JAX_COMPILATION_CACHE_DIR=str(cache)
    )
    # the examples import litefocus_jax; this works whether or not `pip install -e .` was run
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    proc.seconds = time.perf_counter() - start
    return proc


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("examples_xla_cache")


@pytest.fixture(scope="session")
def example_runs(request, tmp_path_factory, xla_cache):
    """{name: (out dir, future of its run)} for every selected test_example_runs case, all submitted at once.
    custom_litefocus (the slowest) goes first and long_audio last, which then loads the dense and LiteFocus
    programs custom_litefocus compiled."""
    names = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.path == Path(__file__) and item.originalname == "test_example_runs"
    ]
    pool = ThreadPoolExecutor(max_workers=JOBS)
    runs = {}
    for name in sorted(names, key=lambda n: (n != "custom_litefocus.py", n == "long_audio.py")):
        out = tmp_path_factory.mktemp(name[:-3]) / "out"
        runs[name] = out, pool.submit(run_example, name, "--out-dir", out, cache=xla_cache)
    yield runs
    pool.shutdown(cancel_futures=True)


def read_wav(path: Path, samples: int) -> np.ndarray:
    data, rate = sf.read(path)
    assert rate == 16000 and data.shape == (samples,), (path, rate, data.shape)
    assert np.isfinite(data).all() and np.abs(data).max() > 0, f"{path} is silent or not finite"
    return data


def check_long_audio(out: Path, stdout: str) -> None:
    assert "RANDOM weights" in stdout and "NOISE" in stdout
    dense, sparse = read_wav(out / "dense.wav", 16000), read_wav(out / "litefocus.wav", 16000)
    assert not np.array_equal(dense, sparse)  # same seed and noise; only the attention differs
    report = json.loads((out / "timings.json").read_text())
    assert report["tiny_random_weights"] is True and report["seconds"] == 1.0 and report["steps"] == 2
    assert report["litefocus_config"] == {"ratio": 0.1, "levels": [1], "sparse_calls": 20}
    timings = report["timings"]
    for mode in ("dense", "litefocus"):
        t = timings[mode]
        assert t["run_s"] > 0 and t["compile_s"] >= 0 and t["first_call_s"] >= t["run_s"], t
    assert report["speedup"] == pytest.approx(timings["dense"]["run_s"] / timings["litefocus"]["run_s"])
    assert f"{report['speedup']:.2f}x" in stdout and 0 < report["relative_l2_difference"] < 10


def check_custom_litefocus(out: Path, stdout: str) -> None:
    policies = json.loads((out / "summary.json").read_text())["policies"]
    assert list(policies) == ["dense", "released", "levels 1+2", "exact", "ratio 0.25", "per_step", "fixed", "length rule"]
    for name, row in policies.items():
        read_wav(out / row["wav"], 16000)
        assert row["run_s"] > 0
    # tiny UNet at 1 s: level 1 is 13 x 8 tokens (K = int(0.1 * 104) = 10), level 2 is 7 x 4 (K = 2)
    assert policies["released"]["levels"] == {"1": {"calls": 20, "time": 13, "freq_bins": 8, "comp_tokens": 10}}
    assert policies["levels 1+2"]["sparse_calls"] == 40 and policies["levels 1+2"]["levels"]["2"]["comp_tokens"] == 2
    assert policies["ratio 0.25"]["levels"]["1"]["comp_tokens"] == 26
    assert policies["exact"]["levels"] == policies["released"]["levels"]
    # 2 steps x 20 calls fresh subsets, one per step, one in all
    assert [policies[p]["distinct_subsets"] for p in ("released", "per_step", "fixed")] == [40, 2, 1]
    # the length rule keeps a 1 s clip dense: the very dense program, the very dense waveform
    assert policies["length rule"]["sparse_calls"] == 0 and policies["length rule"]["vs_dense"] == 0.0
    assert all(policies[p]["vs_dense"] > 0 for p in ("released", "levels 1+2", "exact", "ratio 0.25", "per_step", "fixed"))
    assert "at 20 s -> 20 sparse calls" in stdout and "ratio must lie in (0, 1]" in stdout


def check_sharded_batch(out: Path, stdout: str) -> None:
    assert "over 8 cpu device(s)" in stdout  # the script's fake host devices
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(prompts) == 6 and sorted(r["index"] for r in records) == list(range(6))
    for rec in records:
        assert rec["prompt"] == prompts[rec["index"]]["prompt"] and rec["samples"] == 16000
        read_wav(out / rec["file"], 16000)
    assert records[2]["seed"] == 1234 and records[3]["negative_prompt"] == "low quality"
    assert len(list(out.glob("*.wav"))) == 6  # the two padding rows of the 8-row batch are never written
    assert "first call : written 6, skipped (already done) 0" in stdout
    assert "second call: written 0, skipped (already done) 6" in stdout


def check_finetune(out: Path, stdout: str) -> None:
    ckpt = out / "step-000005"
    assert (ckpt / "unet" / "litefocus_jax_model.safetensors").is_file() and (ckpt / "optimizer_state.safetensors").is_file()
    assert json.loads((ckpt / "train_state.json").read_text())["step"] == 5
    assert "LiteFocus at levels [1]" in stdout


def check_attention_analysis(out: Path, stdout: str) -> None:
    report = json.loads((out / "report.json").read_text())
    assert report["random_weights"] is True and "RANDOM" in stdout.upper()
    pngs = list(out.glob("**/*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def check_rerank(out: Path, stdout: str) -> None:
    report = json.loads((out / "ranking.json").read_text())
    assert report["tiny_random_weights"] is True and report["candidates"] == 3 and len(report["prompts"]) == 2
    for p, row in enumerate(report["prompts"]):
        scores, order = row["scores"], row["order"]
        assert sorted(order) == [0, 1, 2] and [scores[c] for c in order] == sorted(scores, reverse=True)
        assert row["best"] == order[0] and row["best_score"] == pytest.approx(scores[order[0]], abs=1e-6)
        wavs = {c: read_wav(out / f"p{p}_c{c}.wav", 16000) for c in range(3)}
        np.testing.assert_array_equal(read_wav(out / row["best_wav"], 16000), wavs[row["best"]])
        assert not np.array_equal(wavs[0], wavs[1])  # candidates differ in their noise
    assert stdout.count("-> kept c") == 2 and "RANDOM weights" in stdout


CHECKS = {
    "long_audio.py": check_long_audio,
    "custom_litefocus.py": check_custom_litefocus,
    "sharded_batch.py": check_sharded_batch,
    "finetune.py": check_finetune,
    "attention_analysis.py": check_attention_analysis,
    "rerank.py": check_rerank,
}


def test_own_examples_are_found(example_runs):
    """Also starts the example runs (in the background) while the quick tests below run."""
    assert set(OWN) <= set(EXAMPLES) and set(CHECKS) == set(OWN)


# the loading path all examples share, and sharded_batch's own order of setup steps
@pytest.mark.parametrize("name", ("long_audio.py", "sharded_batch.py"))
def test_missing_model_fails_before_compiling(name, tmp_path, xla_cache):
    out = tmp_path / "out"
    proc = run_example(name, "--model", tmp_path / "no-such-snapshot", "--out-dir", out, cache=xla_cache)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert re.search(r"error: --model .*no-such-snapshot", proc.stderr), proc.stderr[-2000:]
    assert "generating" not in proc.stdout and "first call" not in proc.stdout and not list(out.glob("*.wav"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_help(name, xla_cache):
    proc = run_example(name, "--help", cache=xla_cache)
    assert proc.returncode == 0 and "--out-dir" in proc.stdout, proc.stderr[-2000:]
    if name in OWN:  # the docstring is the help text: both commands are in it
        assert f"python examples/{name}\n" in proc.stdout or f"python examples/{name} " in proc.stdout
        assert f"python examples/{name} --model cvssp/audioldm2" in proc.stdout
        assert f"./example_outputs/{name[:-3]}" in proc.stdout


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name, example_runs):
    out, future = example_runs[name]
    proc = future.result()
    print(f"{name}: {proc.seconds:.1f} s")
    assert proc.returncode == 0, f"{name} exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert out.is_dir() and any(out.iterdir()), f"{name} wrote nothing into --out-dir"
    if name in CHECKS:
        CHECKS[name](out, proc.stdout)
