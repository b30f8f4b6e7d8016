"""Hub ids, offline: a tiny snapshot and its converted form laid out as a Hugging Face cache
(`hub/models--org--name/{blobs,refs/main,snapshots/<rev>}`, files as symlinks to blobs as huggingface_hub writes
them) under a temporary HF_HOME, loaded with HF_HUB_OFFLINE=1 by id: the pipeline, `load_unet`, and
`litefocus-jax generate`. huggingface_hub reads both variables when imported, so the loads run in a fresh process,
set up as a user would."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_pipeline import save_tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]
REVISION = "0123456789abcdef0123456789abcdef01234567"

# Loads by Hub id (the pipeline and load_unet from both forms, the CLI from the converted one); prints one JSON line.
CHECK = """
import json, sys
import numpy as np, jax
from flax import nnx
from litefocus_jax.commands.cli import main
from litefocus_jax.models.unet_audioldm2 import load_unet
from litefocus_jax.pipelines.audioldm2.conversion import resolve_snapshot
from litefocus_jax.pipelines.audioldm2.pipeline_audioldm2 import AudioLDM2Pipeline

pipe = AudioLDM2Pipeline.from_pretrained("org/tiny")
unet = nnx.to_pure_dict(nnx.state(load_unet("org/tiny-converted")))
unet_diffusers = nnx.to_pure_dict(nnx.state(load_unet("org/tiny")))
pipe_converted = AudioLDM2Pipeline.from_pretrained("org/tiny-converted")
same = lambda a, b: all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.array_equal, a, b)))
try:
    AudioLDM2Pipeline.from_pretrained("org/absent")
    missing = None
except FileNotFoundError as e:
    missing = str(e)
cli = main(["generate", "a dog barks", "--model", "org/tiny-converted", "--out-dir", sys.argv[1], "--seconds", "0.0005"])
print(json.dumps(dict(
    snapshots=[str(resolve_snapshot(name)) for name in ("org/tiny", "org/tiny-converted")],
    same_unet=same(unet, pipe.modules["unet"][1]),
    same_unet_diffusers=same(unet_diffusers, pipe.modules["unet"][1]),
    same_pipe_converted=all(same(pipe_converted.modules[k][1], pipe.modules[k][1]) for k in pipe.modules),
    missing=missing,
    cli=cli,
)))
"""


def lay_out_hub_cache(snapshot: Path, hf_home: Path, repo_id: str) -> Path:
    """Copy `snapshot` into HF_HOME's hub cache as huggingface_hub stores a download; the snapshot folder."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    for src in sorted(p for p in snapshot.rglob("*") if p.is_file()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / REVISION / src.relative_to(snapshot)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return repo / "snapshots" / REVISION


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from litefocus_jax.pipelines.audioldm2.conversion import convert

    root = tmp_path_factory.mktemp("hub")
    local = save_tiny_pipeline(root / "tiny")
    convert(local, root / "converted", log=lambda *_: None)
    for folder, repo_id in ((local, "org/tiny"), (root / "converted", "org/tiny-converted")):
        lay_out_hub_cache(folder, root / "hf_home", repo_id)
    return root


def test_hub_ids_load_offline_from_the_cache(hub):
    env = dict(os.environ, HF_HOME=str(hub / "hf_home"), HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    env.pop("HF_HUB_CACHE", None)
    out = hub / "out"
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    cache = hub / "hf_home" / "hub"
    assert found["snapshots"] == [str(cache / f"models--org--{n}" / "snapshots" / REVISION) for n in ("tiny", "tiny-converted")]
    # the pipeline and load_unet, each from the diffusers and the converted form by id: the same parameters
    assert found["same_unet"] and found["same_unet_diffusers"] and found["same_pipe_converted"]
    assert "org/absent" in found["missing"] and "Hugging Face cache" in found["missing"]
    # the CLI loaded the converted form by id; its only item is shorter than a latent frame, so nothing compiles
    assert found["cli"] == 1 and "loaded org/tiny-converted in" in proc.stderr and "below one latent frame" in proc.stderr
