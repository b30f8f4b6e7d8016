"""`litefocus-jax evaluate` end to end on random evaluation networks (tiny widths) and the random tiny generator:
folder scoring (every metric present, paired by name) and --generate (dense + LiteFocus, resumable, the table)."""

import json

import numpy as np
import pytest
import soundfile as sf

from litefocus_jax.commands.cli import main
from litefocus_jax.evaluation import metrics
from litefocus_jax.evaluation.features import embed_clips, random_networks
from litefocus_jax.evaluation.report import read_prompts


def _write_set(folder, names, seed, seconds=1.0):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    for i, name in enumerate(names):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * i + 40 * seed) * t) + 0.05 * rng.normal(size=t.shape)
        sf.write(folder / name, wave.astype(np.float32), 16000, subtype="PCM_16")


def test_evaluate_folders_end_to_end(tmp_path, capsys):
    names = [f"id{i:02d}.wav" for i in range(10)]  # IS needs 10 clips (10 splits)
    _write_set(tmp_path / "ref", names, 0)
    _write_set(tmp_path / "gen", names, 1, seconds=2.5)  # longer than the 2 s window below: the policy cuts it
    (tmp_path / "captions.csv").write_text("audiocap_id,caption\n" + "".join(f"id{i:02d},sound number {i}\n" for i in range(10)))
    out = tmp_path / "scores"
    argv = ["evaluate", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"), "--prompts", str(tmp_path / "captions.csv")]
    argv += ["--random-networks", "tiny", "--clap", "tiny", "--window-seconds", "2", "--out-dir", str(out)]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    row = res["rows"][0]
    for key in ("fad", "fd", "kl_softmax", "kl_sigmoid", "is_mean", "kid_mean", "clap_mean", "fad_clap"):
        assert isinstance(row[key], float) and np.isfinite(row[key]), (key, row)
    assert row["clips"] == 10 and row["pairs"] == 10 and row["notes"] == []
    assert res["weights_random"] and "RANDOM WEIGHTS" in res["warning"] and "CLAP" in res["warning"]
    assert res["long_audio"] == "first" and res["window_seconds"] == 2.0
    md = (out / "results.md").read_text()
    assert "RANDOM WEIGHTS" in md and "`first`" in md and "| FAD (VGGish) |" in md

    # the command's numbers are the metric functions on the extracted features (the same random networks)
    nets = random_networks(16000, size="tiny")
    gen = embed_clips(nets, {n: tmp_path / "gen" / n for n in names}, policy="first", window_s=2.0, with_clap=False)
    ref = embed_clips(nets, {n: tmp_path / "ref" / n for n in names}, policy=None, window_s=2.0, with_clap=False)
    assert gen["vggish"].shape[0] == 20  # 2 s -> two 0.96 s examples per clip, pooled
    assert row["fd"] == pytest.approx(metrics.frechet_distance_of(gen["cnn14"], ref["cnn14"]), rel=1e-9)
    assert row["fad"] == pytest.approx(metrics.frechet_distance_of(gen["vggish"], ref["vggish"]), rel=1e-9)
    assert row["kl_softmax"] == pytest.approx(
        metrics.kl_divergence((names, gen["logits"]), (names, ref["logits"]))["kl_softmax"], rel=1e-9
    )
    mean = embed_clips(nets, {names[0]: tmp_path / "gen" / names[0]}, policy="mean", window_s=2.0, with_clap=False)
    assert mean["vggish"].shape[0] == 2 and not np.allclose(mean["cnn14"], gen["cnn14"][:1])  # 2 windows averaged

    # bad setup fails before any work, naming the problem
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "gen"), "--random-networks", "tiny", "--networks", str(tmp_path)]) == 2
    assert "exactly one of --networks" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nope"), "--random-networks", "tiny"]) == 2
    assert "nope is not a folder" in capsys.readouterr().err


def test_evaluate_generate_dense_vs_litefocus(tmp_path, capsys, monkeypatch):
    import litefocus_jax.commands.models as models

    built, load = {}, models.load_pipeline

    def cached(resolved, **kw):  # the resumed run reuses the pipeline object (~20 s of building on 2 loaded cores)
        if resolved not in built:
            built[resolved] = load(resolved, **kw)
        return built[resolved]

    monkeypatch.setattr(models, "load_pipeline", cached)
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"audiocap_id": f"c{i}", "caption": f"a dog barks {i}"}) + "\n" for i in range(3))
    )
    _write_set(tmp_path / "ref", [f"c{i}.wav" for i in range(3)], 2)
    out = tmp_path / "runs"
    argv = ["evaluate", "--generate", "--prompts", str(tmp_path / "prompts.jsonl"), "--model", "tiny", "--seconds", "1"]
    # one setting (one compile of the tiny generator: ~80 s on a loaded 2-core machine); dense runs the same code path
    argv += [
        "--no-dense",
        "--litefocus-ratios",
        "0.5",
        "--steps",
        "2",
        "--reference",
        str(tmp_path / "ref"),
        "--random-networks",
        "tiny",
    ]
    argv += ["--out-dir", str(out), "--batch-size", "3", "--no-plot"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert [(r["seconds"], r["setting"]) for r in res["rows"]] == [(1.0, "litefocus-0.5")]
    for r in res["rows"]:
        assert r["clips"] == 3 and r["pairs"] == 3 and r["seconds_per_clip"] > 0
        assert all(isinstance(r[k], float) for k in ("fad", "fd", "kl_softmax", "kid_mean", "clap_mean", "fad_clap"))
        assert r["is_mean"] is None and any("IS" in n for n in r["notes"])  # 3 clips < 10 splits: said, not hidden
    assert "the generator" in res["warning"] and "evaluation networks" in res["warning"] and "CLAP" in res["warning"]
    assert (
        json.loads(next((out / "1s" / "litefocus-0.5").glob("manifest*.jsonl")).read_text().splitlines()[0])["attention"]["ratio"]
        == 0.5
    )
    wavs = sorted((out / "1s" / "litefocus-0.5").glob("*.wav"))
    assert len(wavs) == 3
    stamp = [w.stat().st_mtime_ns for w in wavs]
    capsys.readouterr()
    assert main(argv) == 0  # resumable: finished wavs are reused, not regenerated
    assert [w.stat().st_mtime_ns for w in wavs] == stamp
    assert "already done" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["rows"][0]["fd"] == pytest.approx(res["rows"][0]["fd"])


def test_read_prompts_formats_and_errors(tmp_path):
    (tmp_path / "a.csv").write_text("audiocap_id,youtube_id,caption\n97151,x,A man talks\n108809,y,Birds chirp\n")
    assert read_prompts(tmp_path / "a.csv") == [("97151.wav", "A man talks"), ("108809.wav", "Birds chirp")]
    (tmp_path / "b.jsonl").write_text('{"prompt": "rain"}\n{"prompt": "wind", "name": "w.flac"}\n')
    assert read_prompts(tmp_path / "b.jsonl") == [("00000.wav", "rain"), ("w.flac", "wind")]
    (tmp_path / "c.csv").write_text("text\nrain\n")
    with pytest.raises(ValueError, match="header"):
        read_prompts(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("id,caption\n1,a\n1,b\n")
    with pytest.raises(ValueError, match="repeat"):
        read_prompts(tmp_path / "d.csv")


def test_table_has_one_row_per_length_and_setting(tmp_path):
    from litefocus_jax.evaluation.driver import parse_settings
    from litefocus_jax.evaluation.report import markdown, write_report

    assert [s.name for s in parse_settings([0.1, 0.25])] == ["dense", "litefocus-0.1", "litefocus-0.25"]
    with pytest.raises(ValueError, match="nothing to generate"):
        parse_settings([], dense=False)
    rows = [
        dict(
            seconds=float(L),
            setting=s,
            fad=1.0 + L / 10,
            fd=2.0,
            kl_softmax=0.5,
            is_mean=None,
            clap_mean=0.3,
            seconds_per_clip=0.1 * L,
            clips=4,
            notes=["IS: too few"],
        )
        for L in (10, 20)
        for s in ("dense", "litefocus-0.1")
    ]
    result = dict(warning=None, long_audio="mean", window_seconds=10.0, sample_rate=16000, rows=rows)
    md = markdown(result)
    assert (
        md.count("| 20 | litefocus-0.1 |") == 1
        and "| length (s) | setting | FAD (VGGish) | FD (PANNs) | KL | CLAP | s / clip | clips |" in md
    )
    assert "RANDOM" not in md and "`mean`" in md and "- IS: too few" in md
    files = write_report(tmp_path, result, plot=True)
    assert [f.name for f in files] == ["results.json", "results.md", "results.png"]


def test_evaluate_convert_checks_its_inputs_and_refuses_a_wrong_checkpoint(tmp_path, capsys):
    """`evaluate convert` (the official pickles -> safetensors folders; the converters themselves are tested in
    tests/models at tiny widths): nothing to do, a missing file, an existing destination, and a pickle that is not
    the official layout all exit 2 with the reason, and leave no folder behind."""
    import torch

    assert main(["evaluate", "convert", "--out", str(tmp_path / "o")]) == 2
    assert "give --vggish and/or --panns" in capsys.readouterr().err
    assert main(["evaluate", "convert", "--vggish", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "none.pth does not exist" in capsys.readouterr().err
    (tmp_path / "o" / "vggish").mkdir(parents=True)
    torch.save({"features.0.weight": torch.zeros(2, 1, 3, 3)}, tmp_path / "vggish-10086976.pth")
    assert main(["evaluate", "convert", "--vggish", str(tmp_path / "vggish-10086976.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["evaluate", "convert", "--vggish", str(tmp_path / "vggish-10086976.pth"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "features.0.weight" in err or "features.0.bias" in err, err
    assert not (tmp_path / "p" / "vggish").exists()
