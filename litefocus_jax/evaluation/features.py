"""The evaluation networks and their batched, jitted feature extraction.

`EvalNetworks` holds VGGish, PANNs Cnn14 and (optionally) a CLAP model with its tokenizer and feature extractor.
Each network's forward is one `jax.jit` over (params, batch) with `nnx.merge` inside, traced at "highest" matmul
precision (scoped: the generator's setting is untouched); batches have a fixed number of rows (the last one padded by
repeating its last row, padding dropped), so a folder costs one compile per network and clip length (Cnn14 sees each clip whole, as audioldm_eval does: clips of one length share a program).

`random_networks(...)` builds them with random weights (tests, smoke runs); `networks.random` then says so and every
output written from them carries that warning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from litefocus_jax.evaluation import audio as A
from litefocus_jax.models import panns, vggish

TINY_VGGISH = vggish.VGGishConfig(channels=(4, 4, 8, 8, 8, 8), hidden=32, embedding=16)
TINY_CNN14_CHANNELS = (4, 8, 8, 16, 16, 32)


_PROGRAMS: dict = {}  # (graphdef, method) -> jitted forward: identical networks share compiled programs


def _jitted(module: nnx.Module, method: str = "__call__") -> Callable:
    graphdef, state = nnx.split(module)
    key = (graphdef, method)
    if key not in _PROGRAMS:

        def apply(p, x):
            return getattr(nnx.merge(graphdef, p), method)(x)

        _PROGRAMS[key] = jax.jit(apply)
    return _precise(_PROGRAMS[key], nnx.to_pure_dict(state))


def _precise(fn: Callable, params) -> Callable:
    """Feature networks run at full float32 matmul precision (GPUs/TPUs otherwise use TF32/bf16 passes), without
    touching the generator's precision setting."""

    def call(x):
        with jax.default_matmul_precision("highest"):
            return fn(params, x)

    return call


def _batched(fn: Callable, rows: np.ndarray, batch: int) -> list[np.ndarray]:
    """Run `fn` on fixed-size chunks of `rows` (padded by repeating the last row); outputs per output, unpadded."""
    if rows.shape[0] == 0:
        raise ValueError("no clips to embed.")
    outs: list[list[np.ndarray]] = []
    batch = min(batch, rows.shape[0])  # a small set is one call of its own size (no padding rows to compute)
    for start in range(0, rows.shape[0], batch):
        chunk = rows[start : start + batch]
        n = chunk.shape[0]
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        res = fn(jnp.asarray(chunk))
        res = res if isinstance(res, tuple) else (res,)
        if not outs:
            outs = [[] for _ in res]
        for o, r in zip(outs, res):
            o.append(np.asarray(r, np.float64)[:n])
    return [np.concatenate(o) for o in outs]


@dataclasses.dataclass
class ClapParts:
    """A CLAP model (with its audio branch), its feature extractor and its RoBERTa tokenizer."""

    model: nnx.Module
    feature_extractor: object
    tokenizer: object
    source: str = ""


@dataclasses.dataclass
class EvalNetworks:
    vggish: vggish.VGGish
    cnn14: panns.Cnn14
    clap: ClapParts | None = None
    random: bool = False
    batch_size: int = 16
    _fns: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def sample_rate(self) -> int:
        return self.cnn14.config.sample_rate

    def random_parts(self) -> list[str]:
        """What had random weights, for the warning every output carries."""
        clap_random = self.clap is not None and "RANDOM" in self.clap.source
        return [w for w, r in (("the evaluation networks", self.random), ("the CLAP model", clap_random)) if r]

    def describe(self) -> dict:
        return {
            "weights": "RANDOM (untrained networks: the numbers mean nothing)" if self.random else "converted checkpoints",
            "cnn14": dataclasses.asdict(self.cnn14.config),
            "vggish": dataclasses.asdict(self.vggish.config),
            "clap": None if self.clap is None else self.clap.source,
        }

    def _fn(self, name: str, module, method="__call__"):
        if name not in self._fns:
            self._fns[name] = _jitted(module, method)
        return self._fns[name]

    def vggish_embeddings(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """16 kHz mono clips -> (examples of all clips pooled, embedding) float64."""
        ex = [vggish.waveform_to_examples(c) for c in clips]
        rows = np.concatenate(ex) if ex else np.zeros((0, vggish.EXAMPLE_FRAMES, vggish.NUM_BANDS), np.float32)
        if rows.shape[0] == 0:
            return np.zeros((0, self.vggish.config.embedding))
        return _batched(self._fn("vggish", self.vggish), rows, self.batch_size * 4)[0]

    def cnn14_features(self, clips: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Clips at the Cnn14 rate -> (embeddings (N, 2048), logits (N, 527)) float64; clips grouped by length."""
        emb = np.zeros((len(clips), self.cnn14.config.channels[-1]))
        logits = np.zeros((len(clips), self.cnn14.config.classes_num))
        by_len: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            by_len.setdefault(c.shape[0], []).append(i)
        fn = self._fn("cnn14", self.cnn14)
        for _, idx in sorted(by_len.items()):
            e, lg = _batched(fn, np.stack([clips[i] for i in idx]).astype(np.float32), self.batch_size)
            emb[idx], logits[idx] = e, lg
        return emb, logits

    def clap_audio(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """48 kHz mono clips -> (N, D) unit-norm CLAP audio embeddings (the mean over a clip's CLAP windows)."""
        fe = self.clap.feature_extractor
        feats = [fe([c], sampling_rate=fe.sampling_rate)[0] for c in clips]  # (n_windows, 1, T, F) each
        rows = np.concatenate(feats)
        out = _batched(self._fn("clap_audio", self.clap.model, "get_audio_features"), rows, self.batch_size)[0]
        starts = np.cumsum([0] + [f.shape[0] for f in feats])
        mean = np.stack([out[a:b].mean(axis=0) for a, b in zip(starts[:-1], starts[1:])])
        return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)

    def clap_text(self, prompts: Sequence[str]) -> np.ndarray:
        """Prompts -> (N, D) unit-norm CLAP text embeddings."""
        tok = self.clap.tokenizer
        t = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="np")
        rows = np.stack([t.input_ids, t.attention_mask], axis=1)
        model = self.clap.model
        if "clap_text" not in self._fns:
            graphdef, state = nnx.split(model)
            key = (graphdef, "text")
            if key not in _PROGRAMS:
                _PROGRAMS[key] = jax.jit(lambda p, r: nnx.merge(graphdef, p).get_text_features(r[:, 0], r[:, 1]))
            self._fns["clap_text"] = _precise(_PROGRAMS[key], nnx.to_pure_dict(state))
        return _batched(self._fns["clap_text"], rows, self.batch_size)[0]


# ---------------------------------------------------------------------------------------------- building


def clap_from_pipeline(pipe, source: str) -> ClapParts:
    from litefocus_jax.pipelines.audioldm2.rerank import check_ready

    check_ready(pipe)
    return ClapParts(nnx.merge(*pipe.modules["text_encoder"]), pipe.feature_extractor, pipe.tokenizer, source)


def tiny_clap_parts(seed: int = 0) -> ClapParts:
    """The tiny pipeline's random CLAP (same config, tokenizer and 2 s feature extractor), built alone: fast."""
    from litefocus_jax.features.feature_extraction_clap import ClapFeatureExtractor
    from litefocus_jax.models.modeling_clap_model import init_clap
    from litefocus_jax.pipelines.audioldm2.tiny import TINY_CLAP_AUDIO, TINY_CLAP_FEATURES, tiny_tokenizers

    tok, _, n_vocab, _ = tiny_tokenizers()
    text = dict(vocab_size=n_vocab, hidden_size=16, intermediate_size=37, num_attention_heads=2, num_hidden_layers=2)
    text |= dict(projection_dim=16, bos_token_id=0, pad_token_id=1, eos_token_id=2, max_position_embeddings=64)
    model = init_clap(dict(model_type="clap", projection_dim=16, audio_config=TINY_CLAP_AUDIO, text_config=text), seed=seed)
    return ClapParts(model, ClapFeatureExtractor.from_dict(TINY_CLAP_FEATURES), tok, "tiny (RANDOM weights)")


def load_clap_parts(root: str | Path) -> ClapParts:
    """An AudioLDM2 snapshot (diffusers or converted): its text_encoder/ (whole CLAP), feature_extractor/, tokenizer/."""
    from transformers import AutoTokenizer

    from litefocus_jax.features.feature_extraction_clap import ClapFeatureExtractor
    from litefocus_jax.models.modeling_clap_model import load_clap

    root = Path(root)
    model = load_clap(root)
    model.check_audio()
    return ClapParts(
        model,
        ClapFeatureExtractor.from_pretrained(root / "feature_extractor"),
        AutoTokenizer.from_pretrained(root / "tokenizer"),
        str(root),
    )


def load_networks(vggish_dir, panns_dir, clap: ClapParts | None, *, batch_size: int = 16) -> EvalNetworks:
    """Converted VGGish and Cnn14 folders (`litefocus-jax evaluate convert ...`)."""
    return EvalNetworks(vggish.load_vggish(vggish_dir), panns.load_cnn14(panns_dir), clap, random=False, batch_size=batch_size)


def random_networks(
    sample_rate: int = 16000, *, size: str = "tiny", clap: ClapParts | None = None, seed: int = 0, batch_size: int = 16
) -> EvalNetworks:
    """Random-weight networks: size "full" (official widths: timing) or "tiny" (tests); results say RANDOM."""
    if sample_rate not in panns.PRESETS or size not in ("tiny", "full"):
        raise ValueError(f"random_networks: sample_rate in {sorted(panns.PRESETS)}, size 'tiny' or 'full'.")
    cfg = panns.PRESETS[sample_rate]
    vcfg = vggish.VGGishConfig()
    if size == "tiny":
        cfg, vcfg = dataclasses.replace(cfg, channels=TINY_CNN14_CHANNELS), TINY_VGGISH
    return EvalNetworks(
        vggish.init_vggish(vcfg, seed=seed), panns.init_cnn14(cfg, seed=seed + 1), clap, random=True, batch_size=batch_size
    )


def embed_clips(nets: EvalNetworks, paths: dict[str, Path], *, policy: str | None, window_s: float, with_clap: bool) -> dict:
    """Read every file and extract every feature the metrics need.

    Args:
      paths: {key: file}; keys name the clips (KL pairs by them).
      policy: the long-clip policy for generated clips (audio.LONG_AUDIO), None for references (never cut).

    Returns:
      {"keys", "seconds" (N,), "vggish" (examples, D), "cnn14" (N, 2048), "logits" (N, 527), "clap" (N, D) or None}.
    """
    keys = list(paths)
    parts_of: list[list[np.ndarray]] = []
    srs, seconds, vgg_input = [], [], []
    for k in keys:
        data, sr = A.read_audio(paths[k])
        seconds.append(data.shape[0] / sr)
        parts = A.apply_policy(data, sr, policy, window_s) if policy else [data]
        parts_of.append(parts)
        srs.append(sr)
        # VGGish pools examples: under "mean" those of the whole clip (not of the overlapping windows)
        vgg_input.append(A.mono(data if policy == "mean" else parts[0], sr, vggish.SAMPLE_RATE))
    owner = np.repeat(np.arange(len(keys)), [len(p) for p in parts_of])
    flat = [(p, sr) for parts, sr in zip(parts_of, srs) for p in parts]
    emb, logits = nets.cnn14_features([A.for_panns(p, sr, nets.sample_rate) for p, sr in flat])
    vgg = nets.vggish_embeddings(vgg_input)
    out = {
        "keys": keys,
        "seconds": np.asarray(seconds),
        "vggish": vgg,
        "cnn14": _mean_by(owner, emb, len(keys)),
        "logits": _mean_by(owner, logits, len(keys)),
        "clap": None,
    }
    if with_clap and nets.clap is not None:
        rate = nets.clap.feature_extractor.sampling_rate
        clap = nets.clap_audio([A.mono(p, sr, rate) for p, sr in flat])
        clap = _mean_by(owner, clap, len(keys))
        out["clap"] = clap / np.maximum(np.linalg.norm(clap, axis=1, keepdims=True), 1e-12)
    return out


def _mean_by(owner: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, rows.shape[1]))
    np.add.at(out, owner, rows)
    return out / np.bincount(owner, minlength=n)[:, None]
