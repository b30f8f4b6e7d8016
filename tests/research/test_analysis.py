"""Attention-pattern analysis: row-mass figures on inputs with known answers, the Attention capture hook, and a
capture through the tiny random-weight pipeline (shapes, normalisation, dense probabilities under LiteFocus,
summaries, the JSON report and the PNG heat maps)."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from litefocus_jax.litefocus.plan import LevelPlan, LiteFocusConfig
from litefocus_jax.models.attention_processor import (
    Attention,
    LiteFocusCalls,
    query_probs,
)
from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline
from litefocus_jax.research import analysis as an

SECONDS = 0.64  # 16 latent frames: level-1 grid 8x8, level 2 4x4, level 3 and mid 2x2
PROMPT = "a dog barks in the rain"


# ---------------------------------------------------------------------------------------------- pure measures


def test_row_mass_of_hand_built_probabilities():
    # T=3, F=2: keys 0..5, rows f = n % 2. Query 3 lies in row 1 (keys 1, 3, 5), query 0 in row 0 (keys 0, 2, 4).
    probs = np.array([[0.1, 0.2, 0.05, 0.4, 0.15, 0.1], [0.5, 0.0, 0.25, 0.0, 0.25, 0.0]])
    np.testing.assert_allclose(an.row_mass(probs, 2, [3, 0]), [0.7, 1.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(an.row_mass(probs[None, None], 2, [3, 0]), [[[0.7, 1.0]]], rtol=0, atol=1e-12)


def test_row_mass_of_uniform_attention_is_one_over_f():
    t, f, h, d = 5, 4, 3, 8
    q = jnp.zeros((1, t * f, h, d))  # zero logits: softmax is exactly uniform
    k = jax.random.normal(jax.random.PRNGKey(0), (1, t * f, h, d))
    queries = (0, 7, 13, 19)
    probs = query_probs(q, k, queries, scale=d**-0.5)
    assert probs.shape == (1, h, len(queries), t * f)
    np.testing.assert_allclose(an.row_mass(probs, f, queries), np.full((1, h, 4), 1 / f), rtol=0, atol=1e-7)


def test_row_mass_is_one_when_queries_only_match_their_own_row():
    t, f = 6, 4
    rows = jnp.arange(t * f) % f
    onehot = jax.nn.one_hot(rows, f) * 30.0  # token n is 30 * e_{n mod F}: off-row logits are exp(-900) smaller
    q = k = onehot[None, :, None, :]
    queries = (0, 5, 10, 23)
    mass = an.row_mass(query_probs(q, k, queries, scale=1.0), f, queries)
    np.testing.assert_allclose(mass, np.ones((1, 1, 4)), rtol=0, atol=1e-6)


def test_row_mass_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="frequency rows"):
        an.row_mass(np.full((1, 10), 0.1), 3, [0])
    with pytest.raises(ValueError, match="query indices"):
        an.row_mass(np.full((2, 12), 1 / 12), 3, [0])


def test_key_grid_is_time_major():
    grid = an.key_grid(np.arange(12.0), (3, 4))
    assert grid.shape == (3, 4) and grid[2, 1] == 2 * 4 + 1


def test_spread_queries_cover_time_and_rows():
    tokens = an.spread_queries((16, 8), 4)
    assert len(set(tokens)) == 4 and all(0 <= q < 128 for q in tokens)
    assert [q % 8 for q in tokens] == [0, 2, 4, 6]
    assert [q // 8 for q in tokens] == [2, 6, 10, 14]
    assert len(set(an.spread_queries((2, 2), 4))) == 4  # more queries than time frames: still distinct
    with pytest.raises(ValueError, match="1 to 4 queries"):
        an.spread_queries((2, 2), 5)


# ---------------------------------------------------------------------------------------------- the hook


def _attention_and_input(tokens=12):
    module = Attention(8, 2, 4, dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, tokens, 8))
    return module, x


def _numpy_qkv(module, x):
    def heads(linear):
        return (np.asarray(x) @ np.asarray(linear.kernel[...])).reshape(x.shape[0], x.shape[1], 2, 4)

    return heads(module.to_q), heads(module.to_k), heads(module.to_v)


def test_attention_hook_sows_dense_probabilities_of_the_chosen_queries():
    module, x = _attention_and_input()
    plain = module(x)
    module.capture_queries = (0, 5, 11)
    out, inter = nnx.capture(module, nnx.Intermediate)(x)
    (probs,) = inter["attention_probs"].get_value()
    q, k, _ = _numpy_qkv(module, x)
    logits = np.einsum("bqhd,bkhd->bhqk", q[:, [0, 5, 11]], k) * 4**-0.5
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    assert probs.shape == (2, 2, 3, 12)
    np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(out, plain)  # capturing leaves the output untouched


def test_captured_probabilities_of_all_queries_reproduce_the_dense_output():
    module, x = _attention_and_input()
    module.capture_queries = tuple(range(12))
    out, inter = nnx.capture(module, nnx.Intermediate)(x)
    (probs,) = inter["attention_probs"].get_value()  # (B, H, N, N)
    _, _, v = _numpy_qkv(module, x)
    heads_out = np.einsum("bhqk,bkhd->bqhd", np.asarray(probs), v).reshape(2, 12, 8)
    np.testing.assert_allclose(module.to_out[0](jnp.asarray(heads_out)), out, rtol=1e-5, atol=1e-6)


def test_hook_is_off_by_default_and_ignores_cross_attention():
    module, x = _attention_and_input()
    _, inter = nnx.capture(module, nnx.Intermediate)(x)
    assert not nnx.to_flat_state(inter)
    module.capture_queries = (0,)
    _, inter = nnx.capture(module, nnx.Intermediate)(x, context=x[:, :5])
    assert not nnx.to_flat_state(inter)


def test_hook_captures_dense_probabilities_under_litefocus():
    module, x = _attention_and_input()  # 12 tokens on a 3x4 grid, one compensation key
    plain = module(x)
    module.capture_queries = (1, 6)
    _, dense = nnx.capture(module, nnx.Intermediate)(x)
    sparse = LiteFocusCalls(LiteFocusConfig(), LevelPlan(1, 1, 3, 4, 1), jnp.array([[7]], jnp.int32))
    out, inter = nnx.capture(module, nnx.Intermediate)(x, grid=(3, 4), sparse=sparse)
    assert sparse.cursor == 1  # the sparse path did run
    assert not np.allclose(out, plain, atol=1e-4)
    np.testing.assert_array_equal(inter["attention_probs"].get_value()[0], dense["attention_probs"].get_value()[0])


# ---------------------------------------------------------------------------------------------- through the pipeline


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def capture(pipe):
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        return an.capture_attention(
            pipe, PROMPT, weights=an.RANDOM_WEIGHTS, audio_length_in_s=SECONDS, num_inference_steps=2, steps=(0, -1), queries=3
        )


@pytest.fixture(scope="module")
def capture_litefocus(pipe):
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        return an.capture_attention(
            pipe,
            PROMPT,
            weights=an.RANDOM_WEIGHTS,
            audio_length_in_s=SECONDS,
            num_inference_steps=2,
            steps=(0,),
            queries=3,
            litefocus=LiteFocusConfig(),
        )


def test_sites_name_every_self_attention_with_its_level_grid(pipe):
    sites = an.self_attention_sites(pipe.unet_config, (1, 16, 16, 8))
    counts = pipe.unet_config.self_attention_calls()
    assert len(sites) == len({s.name for s in sites}) == sum(counts.values())
    for level, count in counts.items():
        assert sum(s.level == level for s in sites) == count
    grids = {s.level: s.grid for s in sites}
    assert grids == {1: (8, 8), 2: (4, 4), 3: (2, 2), "mid": (2, 2)}
    assert sites[0].name == "down_blocks.1.attentions.0.transformer_blocks.0.attn1"
    assert sites[1].name == "down_blocks.1.attentions.0.transformer_blocks.0.attn2"  # double self-attention
    assert sites[-1].name == "up_blocks.2.attentions.8.transformer_blocks.0.attn1" and sites[-1].level == 1


def test_capture_shapes_and_normalisation(capture, pipe):
    heads = dict(zip(range(4), pipe.unet_config.heads), mid=pipe.unet_config.heads[-1])
    assert capture.steps == (0, 1) and capture.batch_rows == ("uncond", "cond") and capture.random_weights
    assert len(capture.sites) == 64 and set(capture.probs) == {(s, site.name) for s in (0, 1) for site in capture.sites}
    for (step, name), probs in capture.probs.items():
        site = capture.site(name)
        assert probs.shape == (2, heads[site.level], 3, site.grid[0] * site.grid[1]) and probs.dtype == np.float32
        assert (probs >= 0).all()
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=0, atol=1e-5)
    first = capture.sites[0].name
    assert not np.allclose(capture.probs[0, first], capture.probs[1, first], atol=1e-4)  # the latent moved


def test_litefocus_run_captures_the_same_dense_first_call(capture, capture_litefocus):
    # Step 0 sees the same latent; the first self-attention of the UNet is the first LiteFocus call, so its q and
    # k (hence its dense probabilities) are identical. Every later site sees LiteFocus outputs and differs.
    first, later = capture.sites[0].name, capture.sites[1].name
    np.testing.assert_allclose(capture_litefocus.probs[0, first], capture.probs[0, first], rtol=0, atol=1e-6)
    assert np.abs(capture_litefocus.probs[0, later] - capture.probs[0, later]).max() > 1e-3
    assert capture_litefocus.litefocus == LiteFocusConfig() and capture_litefocus.steps == (0,)


def test_summary_rows_table_and_report(capture, tmp_path):
    rows = an.summarize(capture)
    assert len(rows) == sum(capture.probs[0, s.name].shape[1] for s in capture.sites) * 2
    row = rows[0]
    site = capture.sites[0]
    want = an.row_mass(capture.probs[0, site.name], site.freq_bins, site.queries)[:, 0].mean()
    assert (row["step"], row["level"], row["block"], row["head"]) == (0, 1, site.name, 0)
    assert row["uniform"] == 1 / 8 and row["row_mass"] == pytest.approx(want, abs=1e-12)
    assert all(0.0 <= r["row_mass"] <= 1.0 + 1e-6 for r in rows)
    by_level = an.aggregate(rows)
    assert [(r["step"], r["level"]) for r in by_level][:4] == [(0, 1), (0, 2), (0, 3), (0, "mid")]
    assert by_level[0]["n"] == 40 and by_level[0]["uniform"] == 1 / 8
    table = an.format_table(rows, weights_note=capture.weights_note)
    assert table.splitlines()[0].startswith("RANDOM WEIGHTS") and "x uniform" in table
    report = json.loads(an.write_report(capture, tmp_path / "report.json", rows).read_text())
    assert report["random_weights"] is True and "RANDOM WEIGHTS" in report["weights_note"]
    assert report["litefocus"] is None and len(report["rows"]) == len(rows) and len(report["sites"]) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_heatmaps_are_valid_pngs(capture, tmp_path):
    from matplotlib.image import imread

    site = capture.sites[0]
    paths = an.save_heatmaps(capture, tmp_path / "maps", blocks=[site.name, "mid"], steps=(0,))
    mids = [s for s in capture.sites if s.level == "mid"]
    assert [p.name for p in paths] == [f"step000_{s.name}.png" for s in [site, *mids]]
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(p.name for p in paths)  # no temp files
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] == b"IEND"
        image = imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300


def test_missing_matplotlib_names_the_extra(capture, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r'pip install "litefocus-jax\[analysis\]"'):
        an.save_heatmaps(capture, tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(steps=(2,)), r"step indices in \[0, 2\)"),
        (dict(blocks=["down_blocks.9.attn1"]), "match no site"),
        (dict(blocks=[0]), "match no site"),  # level 0 has no attention in the tiny UNet
        (dict(queries=[64]), r"token indices in \[0, 64\)"),
        (dict(queries={1: [0]}), "no entry for level 2"),
        (dict(weights=""), "weights must say"),
    ],
)
def test_bad_arguments_fail_before_any_compile(pipe, kwargs, match):
    args = dict(weights=an.RANDOM_WEIGHTS, audio_length_in_s=SECONDS, num_inference_steps=2) | kwargs
    with pytest.raises(ValueError, match=match):
        an.capture_attention(pipe, PROMPT, **args)
