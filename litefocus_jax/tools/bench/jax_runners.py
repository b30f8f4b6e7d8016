"""The JAX side of the benchmark: one attention call, one UNet call, or the pipeline's own jitted stages
(denoising scan, then VAE decode + vocoder), each compiled ahead of time (compile timed apart) and then timed.

Each runner takes a measurement spec (`specs.measurement_spec`) and returns its timing and memory dict.
"""

from __future__ import annotations

import time

import numpy as np

from litefocus_jax.schedulers.scheduling_utils import CVSSP_DDIM
from litefocus_jax.tools.bench.specs import (
    BATCH,
    GUIDANCE,
    MEL_LATENT_BINS,
    RATIO,
    TIMESTEP,
    Impl,
    attention_inputs,
    model_configs,
    text_states,
)
from litefocus_jax.tools.bench.timing import save_output, stage_medians, staged, timed_runs, timing_fields


def compile_timed(jitted, *args) -> tuple:
    """AOT lower + compile, timed apart from any run. -> (executable, lower_s, compile_s)."""
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    mid = time.perf_counter()
    compiled = lowered.compile()
    return compiled, mid - start, time.perf_counter() - mid


def memory_analysis(compiled) -> dict | None:
    """The executable's own buffer sizes (deterministic): arguments, outputs, temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    out = {
        name: int(getattr(m, f"{name}_size_in_bytes", 0)) for name in ("argument", "output", "temp", "alias", "generated_code")
    }
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def device_peak_bytes():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def jax_run(stages, spec: dict) -> dict:
    """Compile each (name, jitted, args) stage ahead of time, then time them chained: every stage after the
    first takes the previous stage's output as its last argument.

    One stage for the attention and UNet scopes; denoise then decode for e2e. -> timing and memory dict.
    """
    import jax

    compiled, lower_s, compile_s, previous = [], 0.0, 0.0, ()
    for name, jitted, args in stages:
        exe, lo, co = compile_timed(jitted, *args, *previous)
        previous = (exe.out_info,)
        compiled.append((name, exe, args))
        lower_s, compile_s = lower_s + lo, compile_s + co

    chain = [
        (name, lambda prev, exe=exe, args=args: exe(*args, *(() if prev is None else (prev,)))) for name, exe, args in compiled
    ]
    call, log = staged(chain, jax.block_until_ready)
    out, first, runs = timed_runs(call, spec["repeats"], budget_s=spec.get("run_budget_s"))
    save_output(spec, out)
    analyses = [memory_analysis(exe) for _, exe, _ in compiled]
    xla = analyses[0] if len(analyses) == 1 else dict(stages=analyses, total=max((a or {}).get("total", 0) for a in analyses))
    return dict(
        lower_s=lower_s,
        compile_s=compile_s,
        **timing_fields(first, runs),
        stage_run_s=stage_medians(chain, log),
        memory=dict(xla=xla, device_peak_bytes=device_peak_bytes()),
    )


def jax_attention(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from litefocus_jax.kernels.attention import (
        dot_product_attention,
        litefocus_attention,
    )

    impl, g = Impl(**spec["impl"]), spec["geometry"]
    q, k, v, idx = attention_inputs(g, spec["seed"])
    args = [jnp.asarray(x, jnp.dtype(spec["dtype"])) for x in (q, k, v)]
    if impl.attention == "dense":
        fn = lambda q, k, v: dot_product_attention(q, k, v, implementation=impl.kernel)  # noqa: E731
    else:
        args.append(jnp.asarray(idx))
        fn = lambda q, k, v, i: litefocus_attention(  # noqa: E731
            q, k, v, freq_bins=g["level1_freq"], comp_index=i, duplicates=impl.duplicates, implementation=impl.kernel
        )
    return jax_run([("attention", jax.jit(fn), args)], spec)


def _litefocus_config(impl: Impl, seed: int):
    from litefocus_jax.litefocus.plan import LiteFocusConfig

    return None if impl.attention == "dense" else LiteFocusConfig(ratio=RATIO, duplicates=impl.duplicates, seed=seed)


def jax_unet(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from litefocus_jax.litefocus.plan import (
        indices_for_step,
        make_comp_indices,
        make_plan,
    )
    from litefocus_jax.models.unet_audioldm2 import init_unet

    impl, g, dtype = Impl(**spec["impl"]), spec["geometry"], jnp.dtype(spec["dtype"])
    unet = init_unet(model_configs(spec["model"])["unet"], seed=spec["seed"], dtype=dtype, attention_implementation=impl.kernel)
    apply, params = unet.functional()
    lf = _litefocus_config(impl, spec["seed"])
    sample = np.random.default_rng(spec["seed"]).standard_normal(
        (BATCH, g["latent_frames"], MEL_LATENT_BINS, 8), dtype=np.float32
    )
    gpt2, t5, mask = text_states(g, spec["seed"])
    comp = None
    if lf is not None:
        comp = indices_for_step(make_comp_indices(make_plan(unet.config, lf, sample.shape), 1), 0)

    def call(p, x, gpt2, t5, mask, comp):
        return apply(p, x, TIMESTEP, gpt2, t5, None, mask, comp_indices=comp, litefocus=lf)

    args = [params, *(jnp.asarray(a, dtype) for a in (sample, gpt2, t5)), jnp.asarray(mask), comp]
    return jax_run([("unet", jax.jit(call), args)], spec)


def build_e2e_pipeline(model: str, dtype, kernel, scheduler: str, seed: int = 0):
    """An AudioLDM2Pipeline with the named model's UNet, VAE and vocoder (random weights) and the tiny text
    stack of `cli.build_tiny_pipeline` (never run by the benchmark: text states are given directly)."""
    from flax import nnx

    from litefocus_jax.models.autoencoder_kl import init_vae
    from litefocus_jax.models.hifigan import init_vocoder
    from litefocus_jax.models.unet_audioldm2 import init_unet
    from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline
    from litefocus_jax.pipelines.audioldm2.tiny import build_tiny_pipeline

    tiny = build_tiny_pipeline(seed, dtype)
    text = {
        name: nnx.merge(*tiny.modules[name]) for name in ("text_encoder", "text_encoder_2", "projection_model", "language_model")
    }
    cfgs = model_configs(model)
    return AudioLDM2Pipeline(
        tokenizer=tiny.tokenizer,
        tokenizer_2=tiny.tokenizer_2,
        **text,
        unet=init_unet(cfgs["unet"], seed=seed, dtype=dtype, attention_implementation=kernel),
        vae=init_vae(cfgs["vae"], seed=seed, dtype=dtype, with_encoder=False),
        vocoder=init_vocoder(cfgs["vocoder"], seed=seed, dtype=dtype),
        scheduler_config=dict(CVSSP_DDIM),
        scheduler=scheduler,
        dtype=dtype,
    )


def jax_e2e(spec: dict) -> dict:
    """The pipeline's own jitted stages: the denoising lax.scan (`_denoise_fn`), then VAE + vocoder (`_decode_fn`)."""
    import jax
    import jax.numpy as jnp

    impl, g, dtype = Impl(**spec["impl"]), spec["geometry"], jnp.dtype(spec["dtype"])
    pipe = build_e2e_pipeline(spec["model"], dtype, impl.kernel, spec["scheduler"], spec["seed"])
    shape = (1, g["latent_frames"], MEL_LATENT_BINS, 8)
    litefocus, comp = pipe._comp_schedule(_litefocus_config(impl, spec["seed"]), shape[1:], spec["steps"])
    latents = np.random.default_rng(spec["seed"]).standard_normal(shape, dtype=np.float32)
    gpt2, t5, mask = text_states(g, spec["seed"])
    keys = jax.random.PRNGKey(spec["seed"])[None]
    denoise_args = [
        pipe.modules["unet"][1],
        jnp.asarray(latents, dtype),
        jnp.asarray(t5, dtype),
        jnp.asarray(mask),
        jnp.asarray(gpt2, dtype),
        jnp.asarray(GUIDANCE, jnp.float32),
        comp,
        keys,
    ]
    stages = [
        ("denoise", pipe._denoise_fn(spec["steps"], True, litefocus, 0.0), denoise_args),
        ("decode", pipe._decode_fn(), [pipe._params("vae", "vocoder")]),
    ]
    return jax_run(stages, spec)
