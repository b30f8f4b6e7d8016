"""GPT2 and AudioLDM2's hidden-state generation against transformers/diffusers at fp32 (tiny random weights)."""

from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AudioLDM2Pipeline
from flax import nnx
from tiny_models import perturb
from transformers import GenerationMixin, GPT2Config, GPT2LMHeadModel, GPT2Model

from litefocus_jax.models.modeling_gpt2 import (
    GPT2Config as JaxGPT2Config,
)
from litefocus_jax.models.modeling_gpt2 import (
    convert_gpt2_state,
    generate_language_model,
    init_gpt2,
    load_gpt2,
)
from litefocus_jax.weights.state import ConversionError, save_converted

REL_TOL = 1e-5  # max |error| / max |reference| at fp32; reached: ~2e-7 (forward and generation)
TINY = dict(n_embd=16, n_head=2, n_layer=2, vocab_size=64, n_positions=128, bos_token_id=0, eos_token_id=0)


def build_tiny_gpt2(seed: int = 0) -> GPT2Model:
    torch.manual_seed(seed)
    model = GPT2Model(GPT2Config(**TINY)).eval()
    model.config.max_new_tokens = 8
    # LayerNorms start at (1, 0) and linears at std 0.02: perturb so every parameter matters
    perturb(model, 0.1)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch GPT2Model, snapshot root holding language_model/, loaded JAX model)."""
    ref = build_tiny_gpt2()
    root = tmp_path_factory.mktemp("gpt2")
    ref.save_pretrained(root / "language_model")
    return ref, root, load_gpt2(root)


def make_inputs(batch=2, length=9, seed=0):
    """Embeddings and a mask shaped like the projection output; row 0 has zeros in the middle (the padded
    negative-prompt T5 tokens), row 1 is all ones."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, length, TINY["n_embd"])).astype(np.float32)
    mask = np.ones((batch, length), np.int64)
    mask[0, 4 : length - 1] = 0
    return x, mask


def rel_err(out, ref):
    return float(np.abs(np.asarray(out, np.float32) - ref).max() / np.abs(ref).max())


def diffusers_generate(model: GPT2Model, x, mask, max_new_tokens=8):
    """diffusers' loop (KV cache, growing mask) on a GPT2Model patched as AUDIOLDM2.md §5.1 describes."""
    model._update_model_kwargs_for_generation = types.MethodType(GenerationMixin._update_model_kwargs_for_generation, model)
    pipe = types.SimpleNamespace(language_model=model)
    with torch.no_grad():
        out = AudioLDM2Pipeline.generate_language_model(
            pipe, torch.from_numpy(x), attention_mask=torch.from_numpy(mask), max_new_tokens=max_new_tokens
        )
    return out.numpy()


def naive_generate(model, x, mask, n):
    """The original AudioLDM2 loop: recompute the whole sequence every step, no cache.

    The sequence lives in a fixed (B, S + n) buffer whose unfilled tail is masked out (and lies in the causal
    future of every position read), so one jit compile serves all n steps.
    """
    apply, params = model.functional()
    apply = jax.jit(apply)
    b, s, d = x.shape
    buf = np.concatenate([x, np.zeros((b, n, d), np.float32)], axis=1)
    for i in range(n):
        m = np.concatenate([mask, np.ones((b, i), mask.dtype), np.zeros((b, n - i), mask.dtype)], axis=1)
        buf[:, s + i] = np.asarray(apply(params, buf, m))[:, s + i - 1]
    return buf[:, s:]


def test_forward_matches_transformers(tiny):
    ref_model, _, model = tiny
    x, mask = make_inputs()
    with torch.no_grad():
        ref = ref_model(inputs_embeds=torch.from_numpy(x), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    out = model(x, mask)
    err = rel_err(out, ref)
    print(f"GPT2 forward: max rel error {err:.1e}")
    assert out.shape == ref.shape and err <= REL_TOL
    # the mask is live: unmasking changes the valid outputs after the padded slots
    assert np.abs(np.asarray(model(x, np.ones_like(mask)))[0, -1] - np.asarray(out)[0, -1]).max() > 1e-3


def test_generation_matches_diffusers_and_full_recompute(tiny):
    ref_model, _, model = tiny
    x, mask = make_inputs()
    ref = diffusers_generate(ref_model, x, mask)
    out = generate_language_model(model, x, mask)  # max_new_tokens from config: 8
    naive = naive_generate(model, x, mask, 8)
    err, err_naive = rel_err(out, ref), rel_err(out, naive)
    print(f"generation vs diffusers: max rel error {err:.1e}; cached vs full recompute: {err_naive:.1e}")
    assert out.shape == (2, 8, TINY["n_embd"])
    assert err <= REL_TOL and err_naive <= REL_TOL


def test_generation_traces_inside_an_outer_jit(tiny):
    """The pipeline's form: params as a jit argument, nnx.merge inside; also a non-default max_new_tokens."""
    ref_model, _, model = tiny
    graphdef, state = nnx.split(model)
    x, mask = make_inputs(batch=1, length=6, seed=1)

    @jax.jit
    def run(params, x, mask):
        return generate_language_model(nnx.merge(graphdef, params), x, mask, max_new_tokens=3)

    out = run(nnx.to_pure_dict(state), x, mask)
    err = rel_err(out, diffusers_generate(ref_model, x, mask, max_new_tokens=3))
    print(f"generation (3 new) under jit: max rel error {err:.1e}")
    assert out.shape == (1, 3, TINY["n_embd"]) and err <= REL_TOL


def test_speech_length_generation_is_one_scan(tiny):
    """The speech checkpoints generate 512 states: one prompt pass plus one `lax.scan` of 511 steps, so the program
    does not grow with max_new_tokens (no Python loop unrolled into it)."""
    _, _, model = tiny
    config = dict(build_tiny_gpt2().config.to_dict(), n_positions=600)
    long = init_gpt2(config)
    graphdef, state = nnx.split(long)
    x, mask = make_inputs(batch=1, length=37)

    def program(n):
        fn = lambda p, x, m: generate_language_model(nnx.merge(graphdef, p), x, m, max_new_tokens=n)  # noqa: E731
        return jax.make_jaxpr(fn)(nnx.to_pure_dict(state), x, mask)

    text = str(program(512))
    assert "length=511" in text and text.count("scan[") == 1
    assert len(str(program(16)).splitlines()) == len(text.splitlines())
    out = generate_language_model(long, x, mask, max_new_tokens=512)
    assert out.shape == (1, 512, TINY["n_embd"]) and np.isfinite(np.asarray(out)).all()


def test_lm_head_checkpoint_loads_with_prefix_stripped(tiny, tmp_path):
    ref_model, _, model = tiny
    lm = GPT2LMHeadModel(ref_model.config).eval()
    lm.transformer.load_state_dict(ref_model.state_dict())
    lm.save_pretrained(tmp_path)
    keys = set(json.loads((tmp_path / "config.json").read_text())["architectures"])
    assert keys == {"GPT2LMHeadModel"}
    loaded = load_gpt2(tmp_path)
    x, mask = make_inputs()
    np.testing.assert_array_equal(np.asarray(loaded(x, mask)), np.asarray(model(x, mask)))


def test_conversion_is_strict(tiny):
    ref_model, _, _ = tiny
    config = ref_model.config.to_dict()
    source = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    # causal-mask buffers of older checkpoints are deliberately ignored; Conv1D weights keep their layout
    flat = convert_gpt2_state({**source, "h.0.attn.bias": np.ones((1, 1, 128, 128), np.float32)}, config)
    np.testing.assert_array_equal(flat[("h", 0, "attn", "c_attn", "kernel")], source["h.0.attn.c_attn.weight"])
    with pytest.raises(ConversionError, match="h.1.mlp.c_fc.weight"):
        convert_gpt2_state({k: v for k, v in source.items() if k != "h.1.mlp.c_fc.weight"}, config)
    with pytest.raises(ConversionError, match="unexpected tensor 'h.0.attn.q_attn.weight'"):
        convert_gpt2_state({**source, "h.0.attn.q_attn.weight": np.zeros((16, 16), np.float32)}, config)
    with pytest.raises(ConversionError, match="c_attn"):
        convert_gpt2_state({**source, "h.0.attn.c_attn.weight": source["h.0.attn.c_attn.weight"].T}, config)


def test_converted_round_trip(tiny, tmp_path):
    ref_model, _, model = tiny
    config = ref_model.config.to_dict()
    flat = convert_gpt2_state({k: v.numpy() for k, v in ref_model.state_dict().items()}, config)
    save_converted(tmp_path / "language_model", flat, config, component="language_model", source="test", dtype="float32")
    loaded = load_gpt2(tmp_path)
    assert loaded.config == model.config
    x, mask = make_inputs()
    np.testing.assert_array_equal(np.asarray(loaded(x, mask)), np.asarray(model(x, mask)))


def test_init_matches_loaded_structure_and_config(tiny):
    ref_model, _, model = tiny
    config = dict(ref_model.config.to_dict(), max_new_tokens=3)
    fresh = init_gpt2(config, seed=1)
    shapes = lambda m: jax.tree_util.tree_map(jnp.shape, m.functional()[1])  # noqa: E731
    assert shapes(fresh) == shapes(model)
    assert fresh.config.max_new_tokens == 3 and model.config.max_new_tokens == 8
    assert JaxGPT2Config.from_hf({"model_type": "gpt2"}).max_new_tokens == 8  # default when the key is absent


def test_bf16_runs_close_to_fp32(tiny):
    _, root, model = tiny
    x, mask = make_inputs()
    out16 = load_gpt2(root, dtype=jnp.bfloat16)(x, mask)
    assert out16.dtype == jnp.bfloat16
    assert rel_err(out16, np.asarray(model(x, mask))) < 5e-2


@pytest.mark.parametrize(
    "config,match",
    [
        ({"model_type": "t5"}, "model_type"),
        ({"model_type": "gpt2", "activation_function": "swiglu"}, "activation_function"),
        ({"model_type": "gpt2", "n_embd": 10, "n_head": 3}, "divisible"),
        ({"model_type": "gpt2", "add_cross_attention": True}, "add_cross_attention"),
    ],
)
def test_bad_configs_raise(config, match):
    with pytest.raises(ValueError, match=match):
        JaxGPT2Config.from_hf(config)


def test_bad_inputs_raise(tiny):
    _, _, model = tiny
    x, mask = make_inputs(length=121)
    with pytest.raises(ValueError, match="n_positions=128"):
        generate_language_model(model, x, mask)  # 121 + 8 > 128
    with pytest.raises(ValueError, match=r"\(B, S, 16\)"):
        model(np.zeros((1, 4, 8), np.float32))
    with pytest.raises(ValueError, match="attention_mask"):
        generate_language_model(model, x[:, :5], mask[:, :4])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_language_model(model, x[:, :5], mask[:, :5], max_new_tokens=0)
