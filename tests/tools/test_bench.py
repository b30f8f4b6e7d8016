"""The benchmark harness (litefocus_jax.tools.bench) and the PyTorch peers (litefocus_jax.tools.torch_reference).

A quick run of every scope with the torch peers checks the report (JSON schema, markdown, PNG) and the
correctness deltas the harness records; isolated runs check the subprocess path, and that a failing or
timed-out measurement becomes a status. No timing is asserted.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from litefocus_jax.tools.bench import main
from litefocus_jax.tools.bench.cli import build_parser
from litefocus_jax.tools.bench.report import markdown_table
from litefocus_jax.tools.bench.specs import SCHEMA, SCOPES, attention_inputs, geometry
from litefocus_jax.tools.bench.targets import check_targets
from litefocus_jax.tools.torch_reference import (
    INSTALL_HINT,
    released_litefocus_sdpa,
    released_litefocus_torch,
    require_torch,
)

MEASUREMENT_KEYS = {
    "id",
    "scope",
    "seconds",
    "scheduler",
    "steps",
    "impl",
    "geometry",
    "dtype",
    "repeats",
    "status",
    "reason",
    "wall_s",
}
TIMING_KEYS = {"compile_s", "first_run_s", "run_s", "runs_s", "setup_s", "memory"}
EXPECTED_IDS = {
    "jax-dense:default",
    "jax-litefocus-official:default",
    "jax-litefocus-exact:default",
    "torch-dense:sdpa",
    "torch-litefocus-official:sdpa",
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """(report, out_dir) of `--quick` over all scopes, in process (one e2e sampler keeps it short; one torch
    thread keeps torch from fighting XLA's threads on a loaded CI machine)."""
    out = tmp_path_factory.mktemp("bench")
    assert main(["--quick", "--steps", "ddim:2", "--torch-threads", "1", "--out-dir", str(out)]) == 0
    return json.loads((out / "bench.json").read_text()), out


def test_quick_report_schema(quick):
    report, _ = quick
    assert report["schema"] == SCHEMA and report["complete"] is True
    assert {"hostname", "cpu_model", "cpu_count", "cpu_affinity", "ram_bytes"} <= set(report["machine"])
    assert report["device"]["backend"] == "cpu"
    assert {"jax", "jaxlib", "flax", "numpy", "torch", "diffusers", "python"} <= set(report["versions"])
    cfg = report["config"]
    assert cfg["model"] == "tiny" and cfg["seconds"] == [0.64] and cfg["steps"] == [["ddim", 2]]
    assert cfg["torch"] == {"enabled": True, "reason": None} and cfg["threads"] == 1 and cfg["jax_impls"] == [None]
    ms = report["measurements"]
    assert {(m["scope"], m["id"]) for m in ms} == {(s, i) for s in SCOPES for i in EXPECTED_IDS}
    for m in ms:
        assert m["status"] == "ok", m
        assert MEASUREMENT_KEYS | TIMING_KEYS <= set(m), sorted(set(m))
        assert m["run_s"] > 0 and len(m["runs_s"]) == 1 and m["geometry"]["level1_tokens"] == 8 * 8
        if m["impl"]["framework"] == "jax":
            assert m["compile_s"] > 0 and m["memory"]["xla"]["total"] > 0
        else:
            assert m["compile_s"] is None
        assert m["memory"]["peak_rss_bytes"] is None  # in process: no per-measurement RSS
        if m["scope"] == "e2e":
            assert set(m["stage_run_s"]) == {"denoise", "decode"}


def test_quick_markdown_and_plot(quick):
    report, out = quick
    md = (out / "bench.md").read_text()
    for scope in SCOPES:
        assert f"### {scope}:" in md
    assert "| 0.64 | 64 |" in md and "LiteFocus vs JAX dense" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_quick_outputs_agree_where_they_should(quick):
    report, _ = quick
    pairs = {(a["scope"], a["impl"], a["reference"]): a for a in report["agreement"]}
    same = [
        pairs[("attention", "jax-dense:default", "torch-dense:sdpa")],
        pairs[("attention", "jax-litefocus-official:default", "torch-litefocus-official:sdpa")],
    ]
    for a in same:
        assert a["expected"] == "equal" and a["max_abs_diff"] < 1e-5, a
    for a in report["agreement"]:
        if a["expected"] == "differs":  # the sparse path really ran
            assert a["rel_l2_diff"] > 1e-3, a
        else:
            assert a["max_abs_diff"] < 1e-5, a
    for scope in ("unet", "e2e"):
        assert (scope, "jax-litefocus-official:default", "jax-dense:default") in pairs
        assert (scope, "torch-litefocus-official:sdpa", "torch-dense:sdpa") in pairs


def test_isolated_run_records_rss_and_a_failing_implementation(tmp_path):
    args = [
        "--scopes",
        "attention",
        "--model",
        "tiny",
        "--seconds",
        "0.64",
        "--repeats",
        "1",
        "--no-torch",
        "--isolation",
        "subprocess",
        "--jax-impls",
        "xla",
        "bogus",
        "--only",
        "jax-dense:*",
        "jax-litefocus-official:xla",
        "--out-dir",
        str(tmp_path),
    ]
    assert main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["config"]["torch"] == {"enabled": False, "reason": "--no-torch"}
    assert [m["id"] for m in report["measurements"]] == ["jax-dense:xla", "jax-litefocus-official:xla", "jax-dense:bogus"]
    by_kernel = {}
    for m in report["measurements"]:
        by_kernel.setdefault(m["impl"]["kernel"], []).append(m)
    for m in by_kernel["xla"]:
        assert m["status"] == "ok" and m["memory"]["peak_rss_bytes"] > m["memory"]["rss_start_bytes"] > 0
    for m in by_kernel["bogus"]:
        assert m["status"] == "error" and "bogus" in m["reason"]


def test_timeout_is_recorded_and_longer_lengths_are_skipped(tmp_path):
    args = [
        "--scopes",
        "attention",
        "--model",
        "tiny",
        "--seconds",
        "0.64",
        "1.28",
        "--no-torch",
        "--timeout",
        "0.2",
        "--isolation",
        "subprocess",
        "--only",
        "jax-dense:*",
        "--out-dir",
        str(tmp_path),
    ]
    assert main(args) == 0
    ms = json.loads((tmp_path / "bench.json").read_text())["measurements"]
    assert [(m["seconds"], m["status"]) for m in ms] == [(0.64, "timeout"), (1.28, "skipped")]
    assert ms[1]["reason"] == "timeout at 0.64 s"


def _fake(scope, ident, run_s, seconds=80.0, status="ok"):
    framework, rest = ident.split("-", 1)
    name, kernel = rest.split(":")
    attention, _, duplicates = name.partition("-")
    impl = dict(framework=framework, attention=attention, duplicates=duplicates or None, kernel=kernel)
    return dict(
        scope=scope,
        id=ident,
        impl=impl,
        seconds=seconds,
        scheduler=None,
        steps=None,
        status=status,
        run_s=run_s,
        geometry=dict(level1_tokens=8000, level1_freq=8, sparse_calls=20),
    )


def test_cpu_targets_pass_fail_and_missing():
    ms = [
        _fake("unet", "jax-dense:xla", 10.0),
        _fake("unet", "jax-litefocus-official:xla", 5.0),
        _fake("unet", "torch-dense:sdpa", 9.5),
        _fake("attention", "jax-dense:xla", 1.0),
        _fake("attention", "jax-litefocus-official:xla", 0.5),
    ]
    targets = check_targets(dict(device=dict(backend="cpu"), measurements=ms))
    assert [t["status"] for t in targets] == ["PASS", "PASS", "PASS", "FAIL"]
    ms[2] = _fake("unet", "torch-dense:sdpa", 1.0, status="oom")
    assert [t["status"] for t in check_targets(dict(device=dict(backend="cpu"), measurements=ms))][1:3] == ["MISSING"] * 2


def test_markdown_shows_failures_and_speedups():
    ms = [
        _fake("unet", "jax-dense:xla", 10.0),
        _fake("unet", "jax-litefocus-official:xla", 4.0),
        _fake("unet", "torch-dense:sdpa", 0.0, status="oom"),
    ]
    table = markdown_table(("unet", None, None), ms)
    assert "| 80 | 8000 | 10 | 4 | OOM | 2.50x |  |  |" in table


@pytest.mark.parametrize("text", ["euler:10", "ddim:0", "ddim", "dpmsolver++:x"])
def test_steps_option_rejects_bad_values(text):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--steps", text])


@pytest.mark.parametrize("same_frequency,cross_frequency", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("freq_bins", [4, 8])
def test_released_row_form_over_sdpa_matches_the_transcription(freq_bins, same_frequency, cross_frequency):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 12 * freq_bins, 16, generator=gen) for _ in range(3))
    idx = torch.randperm(12 * freq_bins, generator=gen)[:10]
    args = (q, k, v, idx, freq_bins, 16**-0.5, same_frequency, cross_frequency)
    err = (released_litefocus_sdpa(*args) - released_litefocus_torch(*args)).abs().max().item()
    assert err < 1e-5


def test_torch_reference_names_the_install_command_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        require_torch()


def test_attention_inputs_are_identical_across_calls():
    g = geometry("tiny", 0.64)
    a, b = attention_inputs(g, 0), attention_inputs(g, 0)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[3].shape == (g["comp_tokens"],) and len(set(a[3].tolist())) == g["comp_tokens"]


def test_quick_says_its_weights_are_random(quick):
    report, out = quick
    assert report["config"]["weights"].startswith("random")
    assert "model tiny (random weights)" in (out / "bench.md").read_text()


def _report(ms):
    cfg = dict(dtype="float32", model="tiny", repeats=3, e2e_repeats=1, batch=2)
    return dict(config=cfg, device=dict(backend="cpu"), machine=dict(cpu_model="test CPU"), measurements=ms)


def test_plot_draws_bars_for_one_length_and_lines_for_several():
    import matplotlib.pyplot as plt

    from litefocus_jax.tools.bench.report import figure

    one = [
        _fake("unet", "jax-dense:xla", 2.0),
        _fake("unet", "torch-dense:sdpa", 3.0),
        _fake("unet", "jax-litefocus-official:xla", 0.0, status="oom"),
    ]
    (ax, *_) = figure(_report(one)).axes
    assert [round(b.get_height(), 6) for b in ax.patches] == [2.0, 3.0, 0.0] and not ax.get_lines()
    assert [t.get_text() for t in ax.get_xticklabels()] == [m["id"] for m in one]
    assert {t.get_text() for t in ax.texts} == {"2 s", "3 s", "oom"}  # each bar says its time (or status)
    assert "run time (s)" in ax.get_ylabel() and "float32, batch 2, model tiny" in ax.get_ylabel() and "80 s" in ax.get_title()
    several = [_fake("unet", "jax-dense:xla", t, seconds=s) for s, t in ((10.24, 1.0), (20.0, 2.5))]
    (ax, *_) = figure(_report(several)).axes
    assert len(ax.get_lines()) == 1 and not ax.patches and ax.get_xlabel() == "audio length (s)"
    assert "median of 3" in ax.get_ylabel()
    plt.close("all")
