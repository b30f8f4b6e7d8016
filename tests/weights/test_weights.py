"""Weight conversion: strict torch -> NNX mapping, clear failures with no output left behind, and round trips.

Every corruption is made on a copy of the shared tiny UNet fixture in tmp_path (the fixture is never mutated).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file
from tiny_models import jax_unet_out, make_inputs

import litefocus_jax as lj
from litefocus_jax.commands.convert import main
from litefocus_jax.models.unet_audioldm2 import _unet_builder, convert_unet_state
from litefocus_jax.pipelines.audioldm2.conversion import convert
from litefocus_jax.utils.io import atomic_output_dir
from litefocus_jax.weights.state import (
    CONVERTED_WEIGHTS,
    FORMAT,
    ConversionError,
    abstract_params,
    read_safetensors,
)

REPO = Path(__file__).resolve().parents[2]
TORCH_FILE = "diffusion_pytorch_model.safetensors"


def copy_unet(tiny_unet_dirs, tmp_path, name="base") -> Path:
    return Path(shutil.copytree(tiny_unet_dirs[name], tmp_path / f"src_{name}"))


def flat_params(unet) -> dict:
    return traverse_util.flatten_dict(unet.functional()[1])


def assert_no_output(dst: Path, before: set[str]):
    """dst was not created, and the parent holds exactly what it held before (no `.<dst>.tmp-*` left)."""
    assert not dst.exists(), f"{dst} exists after a failed conversion"
    assert not list(dst.parent.glob(f".{dst.name}.tmp-*")), "a temporary folder was left behind"
    assert {p.name for p in dst.parent.iterdir()} == before


# ---------------------------------------------------------------------------------------------- 1. coverage


def test_convert_unet_state_maps_every_tensor_with_the_right_layout(tiny_unet_dirs):
    folder = tiny_unet_dirs["base"]
    source = load_file(folder / TORCH_FILE)
    config = json.loads((folder / "config.json").read_text())
    flat = convert_unet_state(source, config)
    _, targets = abstract_params(_unet_builder(lj.UNetConfig.from_diffusers(config), jnp.float32, None))

    assert len(source) == len(flat) == len(targets) == 1520
    assert set(flat) == set(targets)
    assert all(tuple(flat[p].shape) == tuple(targets[p].shape) for p in targets)
    assert sum(v.size for v in flat.values()) == sum(v.size for v in source.values())

    checks = {  # torch key -> (NNX path, layout)
        "conv_in.weight": (("conv_in", "kernel"), lambda w: w.transpose(2, 3, 1, 0)),
        "down_blocks.0.downsamplers.0.conv.weight": (
            ("down_blocks", 0, "downsamplers", 0, "conv", "kernel"),
            lambda w: w.transpose(2, 3, 1, 0),
        ),
        "down_blocks.1.attentions.0.proj_in.weight": (
            ("down_blocks", 1, "attentions", 0, "proj_in", "kernel"),
            lambda w: w.transpose(2, 3, 1, 0),
        ),
        "time_embedding.linear_1.weight": (("time_embedding", "linear_1", "kernel"), lambda w: w.T),
        "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight": (
            ("down_blocks", 1, "attentions", 0, "transformer_blocks", 0, "ff", "net", 2, "kernel"),
            lambda w: w.T,
        ),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_q.weight": (
            ("down_blocks", 1, "attentions", 0, "transformer_blocks", 0, "attn2", "to_q", "kernel"),
            lambda w: w.T,
        ),
        "conv_norm_out.weight": (("conv_norm_out", "scale"), lambda w: w),
        "down_blocks.1.attentions.0.norm.weight": (("down_blocks", 1, "attentions", 0, "norm", "scale"), lambda w: w),
        "conv_norm_out.bias": (("conv_norm_out", "bias"), lambda w: w),
        "conv_in.bias": (("conv_in", "bias"), lambda w: w),
    }
    for key, (path, layout) in checks.items():
        assert path in flat, (key, path)
        np.testing.assert_array_equal(flat[path], layout(source[key]), err_msg=key)
    # the non-square ff.net.2 (32, 128) really is transposed, not just reshaped
    assert flat[("down_blocks", 1, "attentions", 0, "transformer_blocks", 0, "ff", "net", 2, "kernel")].shape == (128, 32)


# ---------------------------------------------------------------------------------------------- 2. failures


def drop_key(folder: Path):
    tensors = load_file(folder / TORCH_FILE)
    del tensors["down_blocks.1.attentions.0.proj_in.weight"]
    save_file(tensors, folder / TORCH_FILE)


def add_key(folder: Path):
    tensors = load_file(folder / TORCH_FILE)
    tensors["down_blocks.1.attentions.0.proj_extra.weight"] = np.zeros((4, 4), np.float32)
    save_file(tensors, folder / TORCH_FILE)


def reshape_key(folder: Path):
    tensors = load_file(folder / TORCH_FILE)
    tensors["conv_in.weight"] = np.zeros((16, 8, 3, 2), np.float32)
    save_file(tensors, folder / TORCH_FILE)


def truncate(folder: Path):
    data = (folder / TORCH_FILE).read_bytes()
    (folder / TORCH_FILE).write_bytes(data[: len(data) // 2])


def garbage(folder: Path):
    (folder / TORCH_FILE).write_bytes(np.random.default_rng(0).bytes(4096))


def edit_config(**change):
    def edit(folder: Path):
        config = json.loads((folder / "config.json").read_text())
        config.update(change)
        (folder / "config.json").write_text(json.dumps(config))

    return edit


UNKNOWN_BLOCKS = ["DownBlock2D", "AttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]

# (corruption, exception load_unet raises, regexes both load_unet's and the converter's message must contain)
FAILURES = {
    "missing": (
        drop_key,
        ConversionError,
        [r"missing tensor", re.escape("'down_blocks.1.attentions.0.proj_in.kernel' (1, 1, 32, 32)")],
    ),
    "extra": (
        add_key,
        ConversionError,
        [r"unexpected tensor", re.escape("'down_blocks.1.attentions.0.proj_extra.weight' (4, 4)")],
    ),
    "shape": (
        reshape_key,
        ConversionError,
        [re.escape("'conv_in.weight'"), re.escape("(16, 8, 3, 2)"), re.escape("(3, 3, 8, 16)"), re.escape("'conv_in.kernel'")],
    ),
    "truncated": (truncate, ConversionError, [re.escape(TORCH_FILE), r"not a valid safetensors"]),
    "garbage": (garbage, ConversionError, [re.escape(TORCH_FILE), r"not a valid safetensors"]),
    "block_type": (edit_config(down_block_types=UNKNOWN_BLOCKS), ValueError, [r"'AttnDownBlock2D'", r"down_block_types\[1\]"]),
    "other_class": (edit_config(_class_name="AutoencoderKL"), ValueError, [r"'AutoencoderKL'"]),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_load_unet_fails_clearly(tiny_unet_dirs, tmp_path, case):
    corrupt, exc, patterns = FAILURES[case]
    src = copy_unet(tiny_unet_dirs, tmp_path)
    corrupt(src)
    with pytest.raises(exc) as info:
        lj.load_unet(src)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))


@pytest.mark.parametrize("case", list(FAILURES))
def test_conversion_fails_clearly_and_writes_nothing(tiny_unet_dirs, tmp_path, capsys, case):
    corrupt, exc, patterns = FAILURES[case]
    src = copy_unet(tiny_unet_dirs, tmp_path)
    corrupt(src)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    dst = out_parent / "converted"

    assert main([str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for pattern in patterns:
        assert re.search(pattern, err), (pattern, err)
    assert_no_output(dst, set())

    with pytest.raises(exc) as info:
        convert(src, dst, log=lambda *_: None)
    for pattern in patterns:
        assert re.search(pattern, str(info.value)), (pattern, str(info.value))
    assert_no_output(dst, set())


def test_failed_snapshot_conversion_writes_nothing(tiny_unet_dirs, tmp_path, capsys):
    root = make_snapshot(tiny_unet_dirs, tmp_path / "snap")
    drop_key(root / "unet")
    before = {p.name for p in tmp_path.iterdir()}
    dst = tmp_path / "converted"
    assert main([str(root), str(dst)]) == 1
    assert "proj_in.kernel" in capsys.readouterr().err
    assert_no_output(dst, before)


def test_failed_overwrite_keeps_the_old_output(tiny_unet_dirs, tmp_path):
    src = copy_unet(tiny_unet_dirs, tmp_path)
    reshape_key(src)
    dst = tmp_path / "converted"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    with pytest.raises(ConversionError, match="conv_in"):
        convert(src, dst, overwrite=True, log=lambda *_: None)
    assert sorted(p.name for p in dst.iterdir()) == ["keep.txt"]
    assert (dst / "keep.txt").read_text() == "old"
    assert not list(tmp_path.glob(".converted.tmp-*"))


def test_atomic_output_dir_cleans_up_after_a_failing_writer(tmp_path):
    dst = tmp_path / "dst"

    def broken(out: Path):
        out.mkdir()
        (out / "half.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_output_dir(dst, broken)
    assert_no_output(dst, set())

    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    with pytest.raises(OSError, match="disk full"):
        atomic_output_dir(dst, broken, overwrite=True)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    assert {p.name for p in tmp_path.iterdir()} == {"dst"}


def test_converted_file_with_foreign_metadata_is_rejected(tiny_unet_dirs, tmp_path):
    folder = tmp_path / "fake"
    folder.mkdir()
    shutil.copy(tiny_unet_dirs["base"] / "config.json", folder / "config.json")
    save_file(load_file(tiny_unet_dirs["base"] / TORCH_FILE), folder / CONVERTED_WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(ConversionError, match=f"metadata format is 'pt', expected '{FORMAT}'"):
        lj.load_unet(folder)


# ---------------------------------------------------------------------------------------------- 3. round trip


def test_cli_round_trip_gives_identical_outputs(tiny_unet_dirs, tmp_path, capsys):
    src = tiny_unet_dirs["base"]
    dst = tmp_path / "converted"
    assert main([str(src), str(dst)]) == 0
    assert "1520 tensors" in capsys.readouterr().out
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", CONVERTED_WEIGHTS]
    assert {p.name for p in tmp_path.iterdir()} == {"converted"}
    tensors, meta = read_safetensors(dst / CONVERTED_WEIGHTS)
    assert meta["format"] == FORMAT and meta["component"] == "unet" and meta["dtype"] == "float32"
    assert len(tensors) == 1520 and all(t.dtype == np.float32 for t in tensors.values())
    assert json.loads((dst / "config.json").read_text()) == json.loads((src / "config.json").read_text())

    ref, conv = lj.load_unet(src), lj.load_unet(dst)
    ref_params, conv_params = flat_params(ref), flat_params(conv)
    assert ref_params.keys() == conv_params.keys()
    for path in ref_params:
        np.testing.assert_array_equal(np.asarray(conv_params[path]), np.asarray(ref_params[path]), err_msg=str(path))
    x, gpt2, t5, mask = make_inputs("base")
    out_ref = jax_unet_out(ref, x, 501, gpt2, t5, mask)
    out_conv = jax_unet_out(conv, x, 501, gpt2, t5, mask)
    assert np.abs(out_ref).max() > 0.1  # a live output, not zeros
    np.testing.assert_allclose(out_conv, out_ref, rtol=0, atol=1e-7)


def test_convert_script_runs_as_a_command(tiny_unet_dirs, tmp_path):
    """`python convert/convert_audioldm2.py SRC DST` from a checkout, with no PYTHONPATH help."""
    dst = tmp_path / "converted"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "convert/convert_audioldm2.py", str(tiny_unet_dirs["base"]), str(dst)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "converted unet: 1520 tensors" in proc.stdout
    tensors, meta = read_safetensors(dst / CONVERTED_WEIGHTS)
    assert meta["format"] == FORMAT and len(tensors) == 1520

    again = subprocess.run(
        [sys.executable, "convert/convert_audioldm2.py", str(tiny_unet_dirs["base"]), str(dst)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 1 and "already exists" in again.stderr


def test_bfloat16_conversion(tiny_unet_dirs, tmp_path):
    src = tiny_unet_dirs["base"]
    dst = tmp_path / "bf16"
    assert main([str(src), str(dst), "--dtype", "bfloat16"]) == 0
    tensors, meta = read_safetensors(dst / CONVERTED_WEIGHTS)
    assert meta["dtype"] == "bfloat16"
    assert len(tensors) == 1520 and {t.dtype.name for t in tensors.values()} == {"bfloat16"}

    conv = flat_params(lj.load_unet(dst, dtype=jnp.bfloat16))
    ref = flat_params(lj.load_unet(src, dtype=jnp.bfloat16))
    assert conv.keys() == ref.keys()
    for path in ref:
        assert conv[path].dtype == jnp.bfloat16, path
        np.testing.assert_array_equal(np.asarray(conv[path], np.float32), np.asarray(ref[path], np.float32), err_msg=str(path))


def test_existing_destination_needs_overwrite(tiny_unet_dirs, tmp_path, capsys):
    src = tiny_unet_dirs["base"]
    dst = tmp_path / "converted"
    dst.mkdir()
    (dst / "stale.txt").write_text("old")

    assert main([str(src), str(dst)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in dst.iterdir()) == ["stale.txt"]
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(src, dst, log=lambda *_: None)

    assert main([str(src), str(dst), "--overwrite"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", CONVERTED_WEIGHTS]
    assert {p.name for p in tmp_path.iterdir()} == {"converted"}  # old content and temp folder gone
    assert read_safetensors(dst / CONVERTED_WEIGHTS)[1]["format"] == FORMAT


# ---------------------------------------------------------------------------------------------- 4. snapshot root


def make_snapshot(tiny_unet_dirs, root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDM2Pipeline", "unet": ["diffusers", "X"]}))
    shutil.copytree(tiny_unet_dirs["base"], root / "unet")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "DDIMScheduler", "num_train_timesteps": 1000})
    )
    return root


def test_snapshot_root_conversion(tiny_unet_dirs, tmp_path):
    root = make_snapshot(tiny_unet_dirs, tmp_path / "snapshot")
    out = tmp_path / "converted"
    assert convert(root, out, log=lambda *_: None) == ["unet"]

    assert sorted(p.name for p in out.iterdir()) == ["model_index.json", "scheduler", "unet"]
    assert sorted(p.name for p in (out / "unet").iterdir()) == ["config.json", CONVERTED_WEIGHTS]
    assert (out / "model_index.json").read_bytes() == (root / "model_index.json").read_bytes()
    assert (out / "scheduler" / "scheduler_config.json").read_bytes() == (
        root / "scheduler" / "scheduler_config.json"
    ).read_bytes()
    assert read_safetensors(out / "unet" / CONVERTED_WEIGHTS)[1]["format"] == FORMAT

    conv = flat_params(lj.load_unet(out))  # the root path resolves unet/
    ref = flat_params(lj.load_unet(root))
    assert conv.keys() == ref.keys() and len(conv) == 1520
    for path in ref:
        np.testing.assert_array_equal(np.asarray(conv[path]), np.asarray(ref[path]), err_msg=str(path))


# ---------------------------------------------------------------------------------------------- 5. not found


def test_load_unet_without_weights(tiny_unet_dirs, tmp_path):
    folder = tmp_path / "no_weights"
    folder.mkdir()
    shutil.copy(tiny_unet_dirs["base"] / "config.json", folder / "config.json")
    with pytest.raises(FileNotFoundError, match="no weights found") as info:
        lj.load_unet(folder)
    assert str(folder) in str(info.value) and TORCH_FILE in str(info.value) and CONVERTED_WEIGHTS in str(info.value)


def test_load_unet_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        lj.load_unet(missing)
    assert str(missing) in str(info.value) and "unet/" in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json") as info:
        lj.load_unet(empty)
    assert str(empty / "unet" / "config.json") in str(info.value)


def test_converting_onto_the_source_is_refused(tiny_unet_dirs, tmp_path):
    src = copy_unet(tiny_unet_dirs, tmp_path)
    before = sorted(p.name for p in src.iterdir())
    for dst in (src, src.parent):
        with pytest.raises(ValueError, match="delete the source"):
            convert(src, dst, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == before
