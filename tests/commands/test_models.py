"""`--model` (commands/models.py): a folder, a Hub id, or `tiny`, the built-in random-weight pipeline. `generate
--model tiny` runs end to end in process, says its weights are random everywhere, and shows per-step progress
fired from inside the compiled scan, once per step and in order. (`bench --quick` runs tiny in
tests/tools/test_bench.py; Hub ids in tests/pipelines/test_hub.py.)"""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from litefocus_jax.commands import models
from litefocus_jax.commands.cli import main
from litefocus_jax.pipelines.audioldm2 import progress


def test_check_model_names_tiny_and_fails_clearly(tmp_path, monkeypatch):
    assert models.check_model("tiny") == models.TINY and models.is_tiny("tiny")
    with pytest.raises(FileNotFoundError, match="not a snapshot folder"):
        models.check_model(tmp_path / "absent" / "deeper")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # a folder called tiny is a folder, not the built-in model
    assert not models.is_tiny("tiny")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        models.check_model("tiny")


def test_generate_model_tiny_runs_marks_random_weights_and_reports_each_step(tmp_path, capsys, monkeypatch):
    heard = []
    listen = progress.StepBar.__call__

    def spy(self, step, timestep, total):
        heard.append((step, timestep, total))
        listen(self, step, timestep, total)

    monkeypatch.setattr(progress.StepBar, "__call__", spy)
    args = ["generate", "a dog barks", "--model", "tiny", "--out-dir", tmp_path, "--seconds", "0.32", "--steps", "3"]
    assert main([*map(str, args), "--cache-dir", ""]) == 0
    err = capsys.readouterr().err
    assert heard == [(0, 667, 3), (1, 334, 3), (2, 1, 3)]  # DDIM "leading", steps_offset 1: once a step, in order
    assert "item 0: 100%" in err and "3/3" in err  # the step bar of the one item
    assert err.count(models.WEIGHTS_NOTE) == 2  # on loading and in the summary
    (rec,) = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert rec["model"] == "tiny" and rec["weights"] == "random" and rec["steps"] == 3
    audio, rate = sf.read(tmp_path / rec["file"])
    assert rate == 16000 and audio.shape == (5120,)
