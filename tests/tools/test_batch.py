"""Sharded, resumable batch generation (litefocus_jax.tools.batch) through `python -m litefocus_jax generate`
subprocesses on the tiny saved snapshot: 8 fake CPU devices vs 1, a hard kill and resume, bad lines, NaN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tiny_pipeline import save_tiny_pipeline

from litefocus_jax.tools.batch import (
    file_name,
    item_seed,
    maybe_initialize_distributed,
    parse_prompts,
    read_manifests,
)

ROOT = Path(__file__).resolve().parents[2]
# five good items (odd, so a batch of 4 pads) of one length and one T5 length (one compile), and a bad line
PROMPTS = 'dog\n{"prompt": "cat", "seed": 11}\n{bad json\nowl\n{"prompt": "bee", "negative_prompt": "hum"}\nelk\n'


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("batch") / "tiny")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(PROMPTS)
    return path


def generate(snapshot, out, prompts, *extra, devices=1, env=None, cache=None):
    full_env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **(env or {}))
    cmd = [
        sys.executable,
        "-m",
        "litefocus_jax",
        "generate",
        "--prompts",
        str(prompts),
        "--model",
        str(snapshot),
        "--out-dir",
        str(out),
        "--seconds",
        "0.064",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--save-npy",
        "--no-progress",
        "--cache-dir",
        str(cache or ""),
        *extra,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "xla_cache"


@pytest.fixture(scope="module")
def one_device(snapshot, prompts_file, tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("one")
    return out, generate(snapshot, out, prompts_file, cache=cache)


def test_prompts_file_parsing(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(
        '# comment\n\nplain prompt\n{"prompt": "x", "seconds": 2, "seed": 3}\n{"prompt": 1}\n{"prompt": "y", "colour": 1}\n'
    )
    items, failures = parse_prompts(path, seconds=5.0, negative_prompt="neg", seed=7)
    assert [(it.index, it.line, it.prompt, it.seconds, it.negative_prompt) for it in items] == [
        (0, 3, "plain prompt", 5.0, "neg"),
        (1, 4, "x", 2.0, "neg"),
    ]
    assert items[0].seed == item_seed(7, 0) and items[1].seed == 3
    assert [f.what for f in failures] == ["line 5", "line 6"] and "colour" in failures[1].reason
    assert item_seed(7, 0) != item_seed(7, 1) != item_seed(8, 1) and item_seed(7, 1) == item_seed(7, 1)
    assert maybe_initialize_distributed({}) is False
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES and JAX_PROCESS_ID not"):  # before JAX starts
        maybe_initialize_distributed({"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"})


def test_bad_line_reported_others_written(one_device):
    out, proc = one_device
    assert proc.returncode == 1, proc.stderr
    assert "line 3: invalid JSON" in proc.stderr and "failed:" in proc.stderr
    records = read_manifests(out)
    assert sorted(records) == [0, 1, 3, 4, 5]  # index 2 is the bad line; indices do not shift
    assert records[1]["seed"] == 11 and records[4]["negative_prompt"] == "hum"
    for rec in records.values():
        data, rate = sf.read(out / rec["file"])
        assert rate == 16000 and data.shape == (1024,) and rec["steps"] == 2 and rec["attention"] == {"type": "dense"}


def test_eight_devices_match_one(snapshot, prompts_file, one_device, tmp_path, cache):
    out1, _ = one_device
    proc = generate(snapshot, tmp_path, prompts_file, devices=8, cache=cache)
    assert proc.returncode == 1 and "8 cpu device(s)" in proc.stderr, proc.stderr
    rec1, rec8 = read_manifests(out1), read_manifests(tmp_path)
    assert sorted(rec8) == sorted(rec1)
    for i, rec in rec1.items():
        a, b = np.load(out1 / rec["file"].replace(".wav", ".npy")), np.load(tmp_path / rec8[i]["file"].replace(".wav", ".npy"))
        assert a.shape == b.shape and np.isfinite(a).all() and np.abs(a).max() > 0
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())  # relative to the peak (~1e-3)
    a0 = np.load(out1 / rec1[0]["file"].replace(".wav", ".npy"))
    assert not np.allclose(a0, np.load(out1 / rec1[3]["file"].replace(".wav", ".npy")))  # items differ


def test_killed_run_resumes_without_loss_or_duplicates(snapshot, prompts_file, one_device, tmp_path, cache):
    out1, _ = one_device
    # the hook exits hard right after the 3rd wav is renamed into place, before its manifest line
    proc = generate(snapshot, tmp_path, prompts_file, env={"LITEFOCUS_JAX_TEST_EXIT_AFTER": "2"}, cache=cache)
    assert proc.returncode == 75, proc.stderr
    assert len(read_manifests(tmp_path)) == 2 and len(list(tmp_path.glob("*.wav"))) == 3
    proc = generate(snapshot, tmp_path, prompts_file, cache=cache)
    assert proc.returncode == 1 and "2 item(s) already done" in proc.stderr, proc.stderr
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    indices = [json.loads(line)["index"] for line in lines]
    assert sorted(indices) == [0, 1, 3, 4, 5]  # nothing lost, no duplicate line
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    for rec in read_manifests(tmp_path).values():
        data, _ = sf.read(tmp_path / rec["file"])
        ref, _ = sf.read(out1 / rec["file"])
        np.testing.assert_allclose(data, ref, atol=1.0 / 32768)
    # a third run has nothing left to do
    proc = generate(snapshot, tmp_path, prompts_file, cache=cache)
    assert (
        "written 0, skipped (already done) 5" in proc.stderr and len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 5
    )


def test_nan_output_is_a_failure_and_never_written(snapshot, tmp_path, cache):
    prompts = tmp_path / "p.txt"
    prompts.write_text("dog\ncat\n")
    out = tmp_path / "out"
    proc = generate(snapshot, out, prompts, env={"LITEFOCUS_JAX_TEST_NAN_ITEMS": "1"}, cache=cache)
    assert proc.returncode == 1 and "item 1: the output contains NaN" in proc.stderr, proc.stderr
    assert sorted(read_manifests(out)) == [0]
    assert not list(out.glob("00001-*"))
    assert file_name(parse_prompts(prompts, seconds=1, negative_prompt="", seed=0)[0][1]) == "00001-cat.wav"
