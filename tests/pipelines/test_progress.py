"""Per-step progress from inside the denoising scan (pipelines/audioldm2/progress.py): the callback fires once per
step, in order, after the step; with it off the hook is not even traced, so the program is today's."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from litefocus_jax.litefocus.plan import LiteFocusConfig
from litefocus_jax.models.unet_audioldm2 import init_unet
from litefocus_jax.pipelines.audioldm2 import progress
from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline
from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline
from litefocus_jax.tools.bench.specs import TINY as BENCH_TINY

SECONDS = 0.32  # 8 latent frames


@pytest.fixture(scope="module")
def pipe():
    """The demo's tiny pipeline with the benchmark's two-level UNet (same conditioning widths): it lowers in a
    third of the time, and the scan under test does not depend on the UNet's depth."""
    tiny = build_tiny_pipeline()
    parts = {name: nnx.merge(graphdef, params) for name, (graphdef, params) in tiny.modules.items()}
    parts["unet"] = init_unet(BENCH_TINY["unet"], seed=0)
    return AudioLDM2Pipeline(
        tokenizer=tiny.tokenizer,
        tokenizer_2=tiny.tokenizer_2,
        scheduler_config=tiny.scheduler_config,
        feature_extractor=tiny.feature_extractor,
        **parts,
    )


def _denoise_args(pipe, steps, litefocus=None, cfg=True):
    _, _, shape, _ = pipe._check_call("a dog barks", None, SECONDS, steps, 3.5, 1, None)
    litefocus, comp = pipe._comp_schedule(litefocus, shape[1:], steps)
    rows = 2 if cfg else 1
    args = (
        pipe.modules["unet"][1],
        jax.random.normal(jax.random.PRNGKey(0), shape),
        jnp.ones((rows, 5, 24)),
        jnp.ones((rows, 5), jnp.int32),
        jnp.ones((rows, 8, 16)),
        jnp.asarray(3.5, jnp.float32),
        comp,
        jax.random.split(jax.random.PRNGKey(1), shape[0]),
    )
    return litefocus, args


def test_off_the_hook_is_not_traced_and_the_program_is_unchanged(pipe, monkeypatch):
    """Off: emit_step is never called while tracing (so nothing of it can be in the program); on, with emit_step
    a no-op, the lowered text equals the off one: the hook adds exactly its callback and nothing else."""
    steps = 3
    litefocus, args = _denoise_args(pipe, steps, LiteFocusConfig(ratio=0.5))  # the sparse scan: the larger program
    assert litefocus is not None
    traced = []
    monkeypatch.setattr("litefocus_jax.pipelines.audioldm2.pipeline_audioldm2.emit_step", lambda *a: traced.append(a[1:4]))
    off = pipe._denoise_fn(steps, True, litefocus, 0.0).lower(*args).as_text()
    assert traced == [] and "callback" not in off
    noop = pipe._denoise_fn(steps, True, litefocus, 0.0, hooked=True).lower(*args).as_text()
    assert len(traced) == 1 and traced[0][2] == steps  # traced once (the scan body), with the step count
    assert noop == off
    key = (
        "denoise",
        steps,
        True,
        dataclasses.replace(litefocus, seed=0, resample="per_call", dense_at_or_below_s=None),
        0.0,
        None,
    )
    assert key in pipe._jitted and key + ("hooked",) in pipe._jitted  # off and on are cached apart
    monkeypatch.undo()
    pipe._jitted.clear()  # the hooked program above was traced with the no-op
    on = pipe._denoise_fn(steps, True, litefocus, 0.0, hooked=True).lower(*args).as_text()
    assert on != off and "callback" in on


def test_call_runs_the_hooked_program_with_the_callback_and_bar(pipe, monkeypatch):
    """`__call__` wiring, without compiling: the callback and bar reach `run_hooked` with the hooked program. The
    callbacks firing once per step, in order, from inside the compiled scan: tests/commands/test_models.py
    (the CLI with `--model tiny`)."""
    calls = []

    class Stop(Exception):
        pass

    def spy(pipe_, key, jitted, args, *, callback, progress):
        calls.append((key, jitted, callback, progress))
        raise Stop

    monkeypatch.setattr("litefocus_jax.pipelines.audioldm2.pipeline_audioldm2.run_hooked", spy)
    states = (jnp.zeros((1, 5, 24)), jnp.ones((1, 5), jnp.int32), jnp.zeros((1, 8, 16)))
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a: states)  # skip compiling the text encoders
    callback = lambda step, t: None  # noqa: E731
    with pytest.raises(Stop):
        pipe("a dog barks", audio_length_in_s=SECONDS, num_inference_steps=4, guidance_scale=1.0, callback=callback)
    ((key, jitted, cb, bar),) = calls
    assert key == ("denoise", 4, False, None, 0.0, None, "hooked") and jitted is pipe._jitted[key]
    assert cb is callback and bar is False


def test_step_text_and_listener_choice():
    assert progress.format_step(0, 200, 2.0) == "step 1/200, 2.0 s, ETA 6 min 38 s"
    assert progress.format_step(199, 200, 4000.0) == "step 200/200, 1 h 06 min, ETA 0.0 s"
    assert progress.batch_steps(None, False, True, "item 0") is False  # off: nothing traced
    assert isinstance(progress.batch_steps(None, True, True, "item 0"), progress.StepBar)

    class Bar:
        postfix = None

        def set_postfix_str(self, text):
            self.postfix = text

    bar = Bar()
    listener = progress.batch_steps(bar, True, False, "batch")
    listener(56, 501, 200)
    assert bar.postfix.startswith("step 57/200, ") and "ETA" in bar.postfix
