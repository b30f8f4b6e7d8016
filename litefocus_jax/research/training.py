"""Fine-tune the AudioLDM2 UNet with optax, LiteFocus optional, with atomic safetensors checkpoints.

    trainer = Trainer(unet, TrainConfig(learning_rate=1e-5, trainable="attention", litefocus=LiteFocusConfig()))
    state = trainer.init_state()
    for batch in dataset.batches(batch_size=4, seed=0):
        state, metrics = trainer.step(state, batch)          # one jax.jit: loss, grads, optax update
    trainer.save("runs/ft/step-1000", state)                  # unet/ loads with load_unet; resumable
    state = trainer.restore("runs/ft/step-1000")

The objective is DDPM epsilon prediction on AudioLDM2's training noise schedule (the snapshot's scheduler
config: 1000 steps, scaled_linear betas 0.0015..0.0195): per example a uniform timestep t, noise eps, the
UNet sees sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and the loss is mean((eps_pred - eps)^2).

Parameters are held flat, keyed by their dotted path ("down_blocks.1.attentions.0...attn1.to_q.kernel"),
split into trainable and frozen: only trainable ones are differentiated and have optimizer state, frozen
ones are passed through untouched (bitwise). LiteFocus compensation indices are data: drawn on the host
per step with `make_comp_indices` from (litefocus.seed, step), so nothing recompiles between steps and a
resumed run draws exactly what the uninterrupted one would have.

Not done here (unlike the original AudioLDM2 training): classifier-free-guidance condition dropout and EMA
weights; train on (latent, text) pairs as given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from litefocus_jax.litefocus.plan import (
    LiteFocusConfig,
    LiteFocusPlan,
    indices_for_step,
    make_comp_indices,
    make_plan,
)
from litefocus_jax.models.unet_audioldm2 import (
    AudioLDM2UNet2DConditionModel,
    UNetConfig,
)
from litefocus_jax.research.training_data import TrainBatch
from litefocus_jax.schedulers.scheduling_ddim import DDIMConfig
from litefocus_jax.schedulers.scheduling_utils import CVSSP_DDIM, _alphas_cumprod
from litefocus_jax.utils.io import atomic_output_dir
from litefocus_jax.weights.state import (
    CONVERTED_WEIGHTS,
    map_converted_state,
    parse_path,
    path_str,
    read_safetensors,
    read_weights,
    save_converted,
)

STATE_FORMAT = "litefocus_jax_train_state"
STATE_VERSION = 1
STATE_JSON = "train_state.json"
STATE_TENSORS = "optimizer_state.safetensors"
# Projections of every UNet attention (self and cross); a predicate on the dotted parameter path.
ATTENTION_PARAMS = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.")
TRAINABLE_PRESETS = {"all": lambda name: True, "attention": lambda name: bool(ATTENTION_PARAMS.search(name))}

Flat = dict[str, jax.Array]

# A two-level UNet with the tiny pipeline's text widths (GPT2 16, T5 24; `cli.build_tiny_pipeline`), its
# level 1 holding the LiteFocus self-attentions as in AudioLDM2. Its training step compiles several times
# faster than the four-level tiny UNet's on CPU: for examples and tests.
TINY_UNET_CONFIG = {
    "_class_name": "AudioLDM2UNet2DConditionModel",
    "in_channels": 8,
    "out_channels": 8,
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "attention_head_dim": 2,
    "norm_num_groups": 8,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": [[None, 16, 24]] * 2,
    "transformer_layers_per_block": 1,
    "sample_size": 256,
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser, parameter subset and attention of a fine-tuning run.

    Attributes:
      learning_rate: AdamW peak learning rate.
      warmup_steps: linear warm-up from 0 to learning_rate over this many steps (0: constant).
      weight_decay: AdamW decoupled weight decay.
      b1 / b2 / adam_eps: Adam moments and the epsilon added to the second-moment root.
      max_grad_norm: clip the global gradient norm to this (None: no clipping).
      trainable: "all", "attention" (to_q/to_k/to_v/to_out.0 of every UNet attention), or a predicate on the
        dotted parameter path (`lambda name: ".attn1." in name`).
      litefocus: LiteFocus sparse self-attention during training (None: dense).
      seed: seeds timesteps and noise; step s uses fold_in(key(seed), s).
    """

    learning_rate: float = 1e-5
    warmup_steps: int = 0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    trainable: str | Callable[[str], bool] = "all"
    litefocus: LiteFocusConfig | None = None
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"TrainConfig: learning_rate must be > 0, got {self.learning_rate!r}.")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            raise ValueError(f"TrainConfig: warmup_steps must be an int >= 0, got {self.warmup_steps!r}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"TrainConfig: max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}.")
        if isinstance(self.trainable, str) and self.trainable not in TRAINABLE_PRESETS:
            raise ValueError(
                f"TrainConfig: trainable must be one of {sorted(TRAINABLE_PRESETS)} or a callable(path) -> bool, got {self.trainable!r}."
            )
        if not isinstance(self.trainable, str) and not callable(self.trainable):
            raise ValueError(f"TrainConfig: trainable must be a preset name or a callable, got {type(self.trainable).__name__}.")
        if self.litefocus is not None and not isinstance(self.litefocus, LiteFocusConfig):
            raise ValueError(f"TrainConfig: litefocus must be a LiteFocusConfig or None, got {type(self.litefocus).__name__}.")

    def is_trainable(self, name: str) -> bool:
        rule = TRAINABLE_PRESETS[self.trainable] if isinstance(self.trainable, str) else self.trainable
        return bool(rule(name))

    def describe(self) -> dict:
        """JSON-safe summary recorded in checkpoints (a callable `trainable` is recorded by name)."""
        out = dataclasses.asdict(dataclasses.replace(self, litefocus=None))
        out["trainable"] = self.trainable if isinstance(self.trainable, str) else getattr(self.trainable, "__name__", "callable")
        out["litefocus"] = None if self.litefocus is None else dataclasses.asdict(self.litefocus)
        return out


class TrainState(NamedTuple):
    """step: optimizer steps taken (host int); params: trainable {path: array}; frozen: the rest; opt_state."""

    step: int
    params: Flat
    frozen: Flat
    opt_state: Any


# ---------------------------------------------------------------------------------------------- config <-> dict


def unet_config_dict(cfg: UNetConfig) -> dict:
    """A diffusers `unet/config.json` dict that `UNetConfig.from_diffusers` maps back to `cfg` exactly."""
    return {
        "_class_name": "AudioLDM2UNet2DConditionModel",
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "block_out_channels": list(cfg.block_out_channels),
        "down_block_types": list(cfg.down_block_types),
        "up_block_types": list(cfg.up_block_types),
        "layers_per_block": list(cfg.layers_per_block),
        "transformer_layers_per_block": list(cfg.transformer_layers_per_block),
        "attention_head_dim": list(cfg.heads),
        "cross_attention_dim": [list(d) for d in cfg.cross_attention_dims],
        "norm_num_groups": cfg.norm_num_groups,
        "norm_eps": cfg.norm_eps,
        "flip_sin_to_cos": cfg.flip_sin_to_cos,
        "freq_shift": cfg.freq_shift,
        "time_embedding_dim": cfg.time_embedding_dim,
        "downsample_padding": cfg.downsample_padding,
        "use_linear_projection": cfg.use_linear_projection,
        "conv_in_kernel": cfg.conv_in_kernel,
        "conv_out_kernel": cfg.conv_out_kernel,
        "sample_size": cfg.sample_size,
    }


def training_alphas_cumprod(scheduler_config: Mapping[str, Any] = CVSSP_DDIM) -> np.ndarray:
    """float32 (num_train_timesteps,) cumulative alphas of a diffusers scheduler config (epsilon prediction)."""
    cfg = DDIMConfig.from_diffusers({**scheduler_config, "_class_name": "DDIMScheduler"})
    if cfg.prediction_type != "epsilon":
        raise ValueError(
            f"scheduler config: prediction_type {cfg.prediction_type!r}; this trainer implements the epsilon loss of every AudioLDM2 checkpoint."
        )
    return _alphas_cumprod(cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule, cfg.trained_betas)


def add_noise(alphas_cumprod: jax.Array, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """sqrt(abar_t) x0 + sqrt(1 - abar_t) noise for x0, noise (B, ...) and int t (B,), in float32
    (diffusers `DDPMScheduler.add_noise`)."""
    abar = alphas_cumprod[t].reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.sqrt(abar) * x0.astype(jnp.float32) + jnp.sqrt(1.0 - abar) * noise.astype(jnp.float32)


def _nested(flat: Mapping[str, jax.Array]) -> dict:
    return traverse_util.unflatten_dict({parse_path(k): v for k, v in flat.items()})


def _flat(nested: Mapping) -> Flat:
    return {path_str(k): v for k, v in traverse_util.flatten_dict(nested).items()}


# ---------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Fine-tunes one UNet geometry. Holds the pure loss, the optimizer and the jitted step; the params live
    in `TrainState`, so one trainer serves any number of states (restored, branched)."""

    def __init__(
        self,
        unet: AudioLDM2UNet2DConditionModel,
        config: TrainConfig = TrainConfig(),
        *,
        scheduler_config: Mapping[str, Any] = CVSSP_DDIM,
    ):
        self.config = config
        self.unet_config: UNetConfig = unet.config
        self.latent_frame_seconds = unet.latent_frame_seconds
        self._apply, params = unet.functional()
        self._initial = _flat(params)
        self.trainable_names = tuple(sorted(n for n in self._initial if config.is_trainable(n)))
        if not self.trainable_names:
            raise ValueError(
                "Trainer: TrainConfig.trainable selects no UNet parameter; check the predicate against "
                f"names such as {next(iter(self._initial))!r}."
            )
        self.alphas_cumprod = jnp.asarray(training_alphas_cumprod(scheduler_config))
        self.optimizer = self._make_optimizer()
        self._step_fn = jax.jit(self._train_step, donate_argnums=(0, 1))
        self._loss_fn = jax.jit(self.loss)

    def _make_optimizer(self) -> optax.GradientTransformation:
        cfg = self.config
        lr = cfg.learning_rate
        if cfg.warmup_steps:
            lr = optax.join_schedules(
                [optax.linear_schedule(0.0, lr, cfg.warmup_steps), optax.constant_schedule(lr)], [cfg.warmup_steps]
            )
        adamw = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
        return adamw if cfg.max_grad_norm is None else optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)

    # ------------------------------------------------------------------------------------------ state

    def init_state(self) -> TrainState:
        """Step 0 from the UNet's own weights; optimizer state only for trainable params."""
        # copies: the step donates these buffers, which are also the UNet module's own
        params = {n: jnp.array(self._initial[n], copy=True) for n in self.trainable_names}
        frozen = {n: v for n, v in self._initial.items() if n not in params}
        return TrainState(0, params, frozen, self.optimizer.init(params))

    def unet_params(self, state: TrainState) -> dict:
        """The full nested UNet params of `state` (for `apply` or `nnx.merge` with the UNet's graphdef)."""
        return _nested({**state.frozen, **state.params})

    # ------------------------------------------------------------------------------------------ pure parts

    def plan(self, latent_shape) -> LiteFocusPlan | None:
        """The LiteFocus plan for latents of `latent_shape` (B, T, F, C); None when training dense."""
        plan = make_plan(self.unet_config, self.config.litefocus, latent_shape, self.latent_frame_seconds)
        return plan if plan is not None and plan.active else None

    def comp_indices(self, latent_shape, seed: int) -> dict[str, np.ndarray]:
        """{level: int32 (calls, K)} compensation indices of one UNet call, drawn by `make_comp_indices`."""
        plan = self.plan(latent_shape)
        if plan is None:
            return {}
        if plan.config.resample == "fixed":
            seed = plan.config.seed  # one subset for the whole run
        return indices_for_step(make_comp_indices(plan, 1, seed=seed), 0)

    def step_comp_indices(self, latent_shape, step: int) -> dict[str, np.ndarray]:
        """Step `step`'s indices: seeded by (litefocus.seed, step), so a resumed run redraws them exactly."""
        if self.config.litefocus is None:
            return {}
        return self.comp_indices(
            latent_shape, int(np.random.SeedSequence((self.config.litefocus.seed, step)).generate_state(1)[0])
        )

    def loss(self, params: Flat, frozen: Flat, batch: TrainBatch, rng: jax.Array, comp: Mapping[str, jax.Array]) -> jax.Array:
        """Pure DDPM epsilon loss (float32 scalar) of `params` ∪ `frozen` on `batch`, timesteps and noise from `rng`."""
        x0 = jnp.asarray(batch.latents, jnp.float32)
        key_t, key_n = jax.random.split(rng)
        t = jax.random.randint(key_t, (x0.shape[0],), 0, self.alphas_cumprod.shape[0])
        noise = jax.random.normal(key_n, x0.shape, jnp.float32)
        noisy = add_noise(self.alphas_cumprod, x0, noise, t)
        litefocus = self.config.litefocus if self.plan(x0.shape) is not None else None
        eps = self._apply(
            _nested({**frozen, **params}),
            noisy,
            t,
            batch.encoder_hidden_states,
            batch.encoder_hidden_states_1,
            None,
            batch.encoder_attention_mask_1,
            comp_indices=comp,
            litefocus=litefocus,
        )
        return jnp.mean(jnp.square(eps.astype(jnp.float32) - noise))

    def _train_step(self, params, opt_state, frozen, batch, rng, comp):
        loss, grads = jax.value_and_grad(self.loss)(params, frozen, batch, rng, comp)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    # ------------------------------------------------------------------------------------------ steps

    def check_batch(self, batch: TrainBatch) -> TrainBatch:
        """Validate shapes against this UNet (before anything compiles); returns the batch as jax arrays."""
        cfg = self.unet_config
        x = jnp.asarray(batch.latents)
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels or not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(
                f"TrainBatch.latents must be float channels-last (B, T, F, {cfg.in_channels}), got {x.dtype} {tuple(x.shape)}; "
                "a torch (B, C, T, F) latent becomes channels-last with .transpose(0, 2, 3, 1)."
            )
        first, second = cfg.encoder_dims()
        states = self._check_states("encoder_hidden_states", batch.encoder_hidden_states, first, x.shape[0])
        states_1 = self._check_states("encoder_hidden_states_1", batch.encoder_hidden_states_1, second, x.shape[0])
        if states is None and (first or second):
            raise ValueError(
                f"TrainBatch.encoder_hidden_states is missing; this UNet's cross-attention needs width {sorted(first or second)}."
            )
        if states_1 is None and second and second != {states.shape[-1]}:
            raise ValueError(
                f"TrainBatch.encoder_hidden_states_1 (T5 states, width {sorted(second)}) is missing; this UNet needs them."
            )
        mask = batch.encoder_attention_mask_1
        if mask is not None:
            mask = jnp.asarray(mask)
            if states_1 is None or mask.shape != states_1.shape[:2]:
                raise ValueError(
                    f"TrainBatch.encoder_attention_mask_1 must be (B, L) like encoder_hidden_states_1, got {tuple(mask.shape)}."
                )
        self.plan(x.shape)  # a LiteFocus level the UNet lacks, or a sample too short for K >= 1, fails here
        return TrainBatch(x, states, states_1, mask)

    @staticmethod
    def _check_states(name: str, value, widths: set, batch: int):
        if value is None:
            return None
        value = jnp.asarray(value)
        if value.ndim != 3 or value.shape[0] != batch or (widths and value.shape[-1] not in widths):
            raise ValueError(
                f"TrainBatch.{name} must be (B={batch}, tokens, width in {sorted(widths)}), got {tuple(value.shape)}."
            )
        return value

    def step_key(self, step: int) -> jax.Array:
        return jax.random.fold_in(jax.random.key(self.config.seed), step)

    def step(self, state: TrainState, batch: TrainBatch) -> tuple[TrainState, dict[str, jax.Array]]:
        """One optimizer step. Returns (new state, {"loss", "grad_norm"} as device scalars, pre-update).

        The trainable params and optimizer state of `state` are donated: use the returned state from here on.
        """
        batch = self.check_batch(batch)
        comp = self.step_comp_indices(batch.latents.shape, state.step)
        params, opt_state, metrics = self._step_fn(
            state.params, state.opt_state, state.frozen, batch, self.step_key(state.step), comp
        )
        return TrainState(state.step + 1, params, state.frozen, opt_state), metrics

    def eval_loss(self, state: TrainState, batch: TrainBatch, seed: int = 0) -> float:
        """The loss at fixed timesteps, noise and LiteFocus indices (all from `seed`): comparable across states."""
        batch = self.check_batch(batch)
        comp = self.comp_indices(batch.latents.shape, seed)
        return float(self._loss_fn(state.params, state.frozen, batch, jax.random.key(seed), comp))

    # ------------------------------------------------------------------------------------------ checkpoints

    def save(self, path: str | os.PathLike, state: TrainState, *, overwrite: bool = False) -> Path:
        """Write a checkpoint folder atomically (a crash leaves the old folder or none, never a partial one):

        unet/config.json + unet/litefocus_jax_model.safetensors   the full UNet, loadable by `load_unet`
                                                                    (drop it into a converted snapshot as unet/)
        optimizer_state.safetensors                                 every optimizer-state leaf, by its key path
        train_state.json                                            step, train config, trainable names
        """
        path = Path(path)
        full = {**state.frozen, **state.params}
        dtypes = {np.dtype(v.dtype).name for v in full.values()}
        if len(dtypes) != 1:
            raise ValueError(f"Trainer.save: the UNet params mix dtypes {sorted(dtypes)}; the converted format holds one.")
        leaves = jax.tree_util.tree_leaves_with_path(state.opt_state)
        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": int(state.step),
            "config": self.config.describe(),
            "trainable": list(self.trainable_names),
        }

        def write(out: Path):
            from safetensors.numpy import save_file

            flat = {parse_path(k): np.asarray(v) for k, v in full.items()}
            save_converted(
                out / "unet",
                flat,
                unet_config_dict(self.unet_config),
                component="unet",
                source=f"litefocus_jax.research.training step {state.step}",
                dtype=dtypes.pop(),
            )
            save_file({jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}, os.fspath(out / STATE_TENSORS))
            (out / STATE_JSON).write_text(json.dumps(meta, indent=2) + "\n")
            os.chmod(out / STATE_TENSORS, (out / STATE_JSON).stat().st_mode)  # safetensors writes 0600

        atomic_output_dir(path, write, overwrite=overwrite)
        return path

    def restore(self, path: str | os.PathLike) -> TrainState:
        """The exact `TrainState` saved at `path`: same params (bitwise), optimizer pytree and step counter.

        Raises ValueError when the checkpoint was made for another UNet geometry, parameter subset or optimizer.
        """
        path = Path(path)
        meta_file = path / STATE_JSON
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path}: {STATE_JSON} is missing; pass a folder written by Trainer.save.")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != STATE_FORMAT or meta.get("version") != STATE_VERSION:
            raise ValueError(
                f"{meta_file}: format {meta.get('format')!r} v{meta.get('version')}, expected {STATE_FORMAT!r} v{STATE_VERSION}."
            )
        if tuple(meta["trainable"]) != self.trainable_names:
            raise ValueError(
                f"{path}: the checkpoint trains {len(meta['trainable'])} parameters, this trainer {len(self.trainable_names)} "
                f"(checkpoint config trainable={meta['config'].get('trainable')!r}); build the Trainer with the same TrainConfig.trainable."
            )
        targets = {parse_path(k): jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in self._initial.items()}
        flat = map_converted_state(read_weights(path / "unet" / CONVERTED_WEIGHTS), targets, "AudioLDM2 UNet (checkpoint)")
        full = {}
        for key, value in flat.items():
            name = path_str(key)
            if value.dtype != self._initial[name].dtype:
                raise ValueError(
                    f"{path}: {name} is {value.dtype} in the checkpoint, {self._initial[name].dtype} in this UNet; "
                    "build the UNet in the checkpoint's dtype."
                )
            full[name] = jnp.asarray(value)
        params = {n: full.pop(n) for n in self.trainable_names}
        opt_state = self._restore_opt_state(path / STATE_TENSORS, params)
        return TrainState(int(meta["step"]), params, full, opt_state)

    def _restore_opt_state(self, file: Path, params: Flat):
        """This trainer's optimizer pytree (from `init`'s abstract shapes) filled with the saved leaves, matched by key path."""
        specs, treedef = jax.tree_util.tree_flatten_with_path(jax.eval_shape(self.optimizer.init, params))
        tensors, _ = read_safetensors(file)
        if set(tensors) != {jax.tree_util.keystr(p) for p, _ in specs}:
            raise ValueError(
                f"{file}: the optimizer state was saved for another optimizer (its leaves differ); "
                "restore with the TrainConfig (clipping, warm-up) it was trained with."
            )
        leaves = []
        for key_path, spec in specs:
            name = jax.tree_util.keystr(key_path)
            value = tensors.get(name)
            if value is None or value.shape != spec.shape or value.dtype != spec.dtype:
                got = None if value is None else f"{value.dtype} {value.shape}"
                raise ValueError(f"{file}: optimizer leaf {name!r} should be {spec.dtype} {spec.shape}, found {got}.")
            leaves.append(jnp.asarray(value))
        return jax.tree_util.tree_unflatten(treedef, leaves)
