"""Fine-tuning: the loss falls (dense and LiteFocus), frozen params stay bitwise, checkpoints round-trip and
resume identically, gradients through the sparse path match finite differences, bad inputs fail clearly.

A two-level tiny UNet (`TINY_UNET_CONFIG`: level 1 holds the LiteFocus self-attentions, as in AudioLDM2)
keeps the five compiles of this file (dense step, LiteFocus step, LiteFocus gradient, two eval losses)
within budget; the full-parameter dense step is the slowest of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

import litefocus_jax as lj
from litefocus_jax.models.presets import unet_config
from litefocus_jax.models.unet_audioldm2 import UNetConfig
from litefocus_jax.research.training import (
    TINY_UNET_CONFIG,
    TrainConfig,
    Trainer,
    add_noise,
    training_alphas_cumprod,
    unet_config_dict,
)
from litefocus_jax.research.training_data import LatentTextDataset, TrainBatch
from litefocus_jax.schedulers.scheduling_utils import CVSSP_DDIM

LR = 1e-3
STEPS = 8


def make_batch(seed: int = 0, batch: int = 2, frames: int = 16) -> TrainBatch:
    """Smooth latents (a learnable structure, not white noise), GPT2 width 16, T5 width 24 with a padded tail."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, frames)[None, :, None, None]
    f = np.linspace(0, 1, 16)[None, None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (batch, 1, 1, 8))
    latents = (np.sin(2 * np.pi * (2 * t + f) + phase) + 0.1 * rng.standard_normal((batch, frames, 16, 8))).astype(np.float32)
    mask = np.ones((batch, 5), np.int32)
    mask[0, 3:] = 0
    return TrainBatch(
        latents,
        rng.standard_normal((batch, 8, 16)).astype(np.float32),
        rng.standard_normal((batch, 5, 24)).astype(np.float32),
        mask,
    )


def host(tree):
    return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), tree)


def assert_bitwise(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


@pytest.fixture(scope="module")
def unet():
    return lj.init_unet(TINY_UNET_CONFIG, seed=0)


@pytest.fixture(scope="module")
def dense(unet):
    return Trainer(unet, TrainConfig(learning_rate=LR))


@pytest.fixture(scope="module")
def sparse(unet):
    """LiteFocus (level 1, the released call set) training the attention projections only."""
    return Trainer(unet, TrainConfig(learning_rate=LR, trainable="attention", litefocus=lj.LiteFocusConfig(seed=3)))


def train(trainer, state, batch, steps):
    losses = []
    for _ in range(steps):
        state, metrics = trainer.step(state, batch)
        losses.append(float(metrics["loss"]))
    assert np.isfinite(losses).all()
    return state, losses


# ---------------------------------------------------------------------------------------------- schedule


def test_noise_schedule_is_audioldm2s():
    ac = training_alphas_cumprod(CVSSP_DDIM)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear")
    np.testing.assert_array_equal(ac, ref.alphas_cumprod.numpy())
    rng = np.random.default_rng(0)
    x0, noise = (rng.standard_normal((3, 4, 16, 8)).astype(np.float32) for _ in range(2))
    t = np.array([0, 500, 999])
    want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)).numpy()
    got = np.asarray(add_noise(jnp.asarray(ac), x0, noise, t))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # reached: ~2e-7 (float32 sqrt order)
    with pytest.raises(ValueError, match="epsilon"):
        training_alphas_cumprod(dict(CVSSP_DDIM, prediction_type="v_prediction"))


def test_unet_config_dict_round_trips(unet):
    assert UNetConfig.from_diffusers(unet_config_dict(unet.config)) == unet.config
    base = UNetConfig.from_diffusers(unet_config("audioldm2-large"))
    assert UNetConfig.from_diffusers(unet_config_dict(base)) == base


# ---------------------------------------------------------------------------------------------- training


def test_dense_training_lowers_the_loss(dense):
    batch = make_batch(0)
    state = dense.init_state()
    assert len(dense.trainable_names) == len(state.params) and not state.frozen
    before = dense.eval_loss(state, batch, seed=7)
    state, losses = train(dense, state, batch, STEPS)
    after = dense.eval_loss(state, batch, seed=7)
    print(f"dense: eval loss {before:.4f} -> {after:.4f} after {STEPS} steps; step losses {np.round(losses, 3)}")
    assert state.step == STEPS
    assert after < 0.8 * before


def test_litefocus_training_lowers_the_loss_and_leaves_frozen_params_bitwise(sparse, dense):
    batch = make_batch(0)
    state = sparse.init_state()
    plan = sparse.plan(batch.latents.shape)
    assert plan is not None and plan.levels[0].level == 1 and plan.levels[0].freq_bins == 8
    names = sparse.trainable_names
    assert names and all(any(p in n for p in (".to_q.", ".to_k.", ".to_v.", ".to_out.0.")) for n in names)
    assert len(state.frozen) > len(state.params)
    # optimizer state only for the trainable subset: Adam's two moments, nothing for frozen params
    moments = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim)
    assert moments == 2 * sum(x.size for x in state.params.values())
    frozen_before, params_before = host(state.frozen), host(state.params)
    # LiteFocus is live in training: same weights, other loss than dense attention
    assert abs(sparse.eval_loss(state, batch, seed=7) - dense.eval_loss(dense.init_state(), batch, seed=7)) > 1e-5

    before = sparse.eval_loss(state, batch, seed=7)
    state, losses = train(sparse, state, batch, STEPS)
    after = sparse.eval_loss(state, batch, seed=7)
    print(f"LiteFocus, attention only: eval loss {before:.4f} -> {after:.4f}; step losses {np.round(losses, 3)}")
    assert after < 0.95 * before
    assert_bitwise(state.frozen, frozen_before)
    changed = [n for n in names if not np.array_equal(np.asarray(state.params[n]), params_before[n])]
    assert len(changed) == len(names)


def test_checkpoint_round_trip_and_identical_resume(sparse, unet, tmp_path):
    batch = make_batch(1)
    state, _ = train(sparse, sparse.init_state(), batch, 2)
    saved = host(state)
    ckpt = sparse.save(tmp_path / "step-2", state)
    state_a, losses_a = train(sparse, state, batch, 2)  # donates `state`

    restored = sparse.restore(ckpt)
    assert restored.step == 2
    assert_bitwise(restored.params, saved.params)
    assert_bitwise(restored.frozen, saved.frozen)
    assert_bitwise(restored.opt_state, saved.opt_state)  # same optax pytree (named tuples), leaves bitwise
    state_b, losses_b = train(sparse, restored, batch, 2)
    assert losses_b == losses_a
    assert_bitwise(state_b.params, state_a.params)
    assert_bitwise(state_b.opt_state, state_a.opt_state)

    # the unet/ folder is a converted component: the library's loader reads it, weights bitwise
    loaded = lj.load_unet(ckpt / "unet")
    assert loaded.config == unet.config
    assert_bitwise(loaded.functional()[1], sparse.unet_params(saved))

    with pytest.raises(FileExistsError, match="already exists"):
        sparse.save(ckpt, state_b)
    sparse.save(ckpt, state_b, overwrite=True)
    assert sparse.restore(ckpt).step == 4
    with pytest.raises(ValueError, match="trainable"):
        Trainer(unet, TrainConfig(learning_rate=LR)).restore(ckpt)
    with pytest.raises(ValueError, match="another optimizer"):
        Trainer(unet, TrainConfig(trainable="attention", max_grad_norm=None)).restore(ckpt)
    with pytest.raises(FileNotFoundError, match="train_state.json"):
        sparse.restore(tmp_path)


def test_gradients_through_litefocus_match_finite_differences(sparse):
    """Reverse-mode gradients of the LiteFocus loss vs central differences, fp32, along three unit directions.

    Step h = 5e-3 along a unit-norm direction balances the two errors of the difference quotient: truncation,
    h^2 |L'''| / 6 (along the gradient it measured 3.0e-3, 7.6e-4, 1.6e-4, 3.8e-5 relative at h = 4e-2, 2e-2,
    1e-2, 5e-3: quadratic, as it must be for a correct gradient), and rounding, ~1e-7 * L / h = 3e-5 for the
    loss L ~1.3 in fp32 (smaller h plateaus there). Rounding is absolute, so every direction is held to
    1e-3 * ||g|| (||g|| is the largest derivative a unit direction can have); the two gradient directions,
    whose derivatives are large, also to 1e-3 relative.
    """
    batch = sparse.check_batch(make_batch(2))
    state = sparse.init_state()
    seed, h = 5, 5e-3
    grad = jax.jit(jax.grad(sparse.loss))(
        state.params, state.frozen, batch, jax.random.key(seed), sparse.comp_indices(batch.latents.shape, seed)
    )
    grad_norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in grad.values())))
    # q/k/v of every self-attention at level 1 (down_blocks[1], up_blocks[0]): they feed the sparse kernel
    sparse_qkv = {
        n
        for n in sparse.trainable_names
        if n.startswith(("down_blocks.1.", "up_blocks.0.")) and ".attn1.to_" in n and ".to_out." not in n
    }
    assert len(sparse_qkv) == 3 * (3 + 6)  # q, k, v x (3 Transformer2D down, 6 up)
    rng = np.random.default_rng(0)
    directions = {
        "gradient": (grad, True),
        "gradient on LiteFocus q/k/v": ({n: g * (n in sparse_qkv) for n, g in grad.items()}, True),
        "random, all trainable": ({n: rng.standard_normal(g.shape).astype(np.float32) for n, g in grad.items()}, False),
    }
    for label, (d, large) in directions.items():
        norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in d.values())))
        d = {n: jnp.asarray(np.asarray(x) / norm, jnp.float32) for n, x in d.items()}
        analytic = float(sum(jnp.vdot(grad[n], d[n]) for n in d))

        def at(scale):
            params = {n: state.params[n] + scale * d[n] for n in d}
            return sparse.eval_loss(state._replace(params=params), batch, seed=seed)

        numeric = (at(h) - at(-h)) / (2 * h)
        err = abs(numeric - analytic)
        print(
            f"{label}: analytic {analytic:.6f}, central difference {numeric:.6f}, error {err / grad_norm:.1e} ||g||, "
            f"relative {err / abs(analytic):.1e}"
        )
        assert err < 1e-3 * grad_norm
        if large:
            assert err < 1e-3 * abs(analytic)


# ---------------------------------------------------------------------------------------------- errors, data


def test_bad_inputs_raise_clear_errors(dense, sparse, unet):
    good = make_batch(0)
    with pytest.raises(ValueError, match="channels-last"):
        dense.check_batch(good._replace(latents=good.latents.transpose(0, 3, 1, 2)))
    with pytest.raises(ValueError, match="channels-last"):
        dense.check_batch(good._replace(latents=good.latents[0]))
    with pytest.raises(ValueError, match=r"encoder_hidden_states must be \(B=2"):
        dense.check_batch(good._replace(encoder_hidden_states=good.encoder_hidden_states[:1]))
    with pytest.raises(ValueError, match=r"width in \[24\]"):
        dense.check_batch(good._replace(encoder_hidden_states_1=np.zeros((2, 5, 16), np.float32)))
    with pytest.raises(ValueError, match="T5 states"):
        dense.check_batch(good._replace(encoder_hidden_states_1=None, encoder_attention_mask_1=None))
    with pytest.raises(ValueError, match="encoder_attention_mask_1"):
        dense.check_batch(good._replace(encoder_attention_mask_1=np.ones((2, 4), np.int32)))
    with pytest.raises(ValueError, match="compensation tokens"):  # 2 latent frames: 1 x 8 tokens at level 1, K = 0
        sparse.check_batch(make_batch(0, frames=2))
    with pytest.raises(ValueError, match="selects no UNet parameter"):
        Trainer(unet, TrainConfig(trainable=lambda name: False))
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="trainable must be one of"):
        TrainConfig(trainable="attn")
    with pytest.raises(ValueError, match="levels"):
        Trainer(unet, TrainConfig(litefocus=lj.LiteFocusConfig(levels=(2,)))).check_batch(good)


def test_dataset_batches_are_seeded_and_resumable():
    rng = np.random.default_rng(0)
    data = LatentTextDataset(
        np.arange(5, dtype=np.float32)[:, None, None, None] * np.ones((5, 4, 16, 8), np.float32),
        rng.standard_normal((5, 8, 16)).astype(np.float32),
    )
    first = [b.latents[:, 0, 0, 0].tolist() for _, b in zip(range(6), data.batches(2, seed=1))]
    assert all(len(b) == 2 for b in first)  # the odd fifth example is dropped per epoch: one batch shape
    assert sorted(sum(first[:2], [])) == sorted(set(sum(first[:2], [])))  # no repeats within an epoch
    resumed = [b.latents[:, 0, 0, 0].tolist() for _, b in zip(range(3), data.batches(2, seed=1, start_step=3))]
    assert resumed == first[3:]
    assert first != [b.latents[:, 0, 0, 0].tolist() for _, b in zip(range(6), data.batches(2, seed=2))]
    with pytest.raises(ValueError, match="rows"):
        LatentTextDataset(np.zeros((3, 4, 16, 8), np.float32), np.zeros((2, 8, 16), np.float32))
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(6))
