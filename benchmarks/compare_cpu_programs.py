"""Are the CPU hot paths of two revisions the same compiled programs? Then their CPU timings cannot differ.

    python benchmarks/compare_cpu_programs.py 40a0729            # that revision against the working tree
    python benchmarks/compare_cpu_programs.py 40a0729 HEAD

For each revision (a temporary git worktree) it compiles, for CPU, the level-1 attention call at 80 s (dense,
LiteFocus official, LiteFocus exact) and the real-size UNet call at 80 s (dense, LiteFocus), and hashes the
optimised HLO with source locations, instruction numbering and stack-frame tables removed. Equal hashes mean XLA
runs the same instructions and fusions. It imports the 0.1 module paths, which every later revision keeps.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("attention dense", "attention official", "attention exact", "unet dense", "unet litefocus")


def _canonical(hlo: str) -> str:
    hlo = re.sub(r", metadata=\{[^}]*\}", "", hlo)
    hlo = re.sub(r"\.\d+", "", hlo)
    hlo = re.sub(r"HloModule \S+", "HloModule M", hlo)
    lines = (line.strip() for line in hlo.splitlines())
    return "\n".join(sorted(line for line in lines if line and not re.match(r'^\d+ (\{file_|")', line)))


def _hashes() -> dict[str, str]:
    """Runs inside the revision's tree: {program: hash of its canonical optimised HLO}."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    import jax
    import jax.numpy as jnp

    from litefocus_jax.attention import dot_product_attention, litefocus_attention
    from litefocus_jax.litefocus import LiteFocusConfig, indices_for_step, make_comp_indices, make_plan
    from litefocus_jax.loading import init_unet
    from litefocus_jax.presets import unet_config

    sds = jax.ShapeDtypeStruct
    q, idx = sds((2, 8000, 8, 32), jnp.float32), sds((800,), jnp.int32)
    rows = lambda mode: lambda q, k, v, i: litefocus_attention(q, k, v, freq_bins=8, comp_index=i, duplicates=mode)
    programs = {
        "attention dense": (lambda q, k, v: dot_product_attention(q, k, v), (q, q, q)),
        "attention official": (rows("official"), (q, q, q, idx)),
        "attention exact": (rows("exact"), (q, q, q, idx)),
    }
    unet = init_unet(unet_config("audioldm2"), seed=0)
    apply, params = unet.functional()
    x, text = sds((2, 2000, 16, 8), jnp.float32), (sds((2, 8, 768), jnp.float32), sds((2, 12, 1024), jnp.float32))
    mask, lf = sds((2, 12), jnp.int32), LiteFocusConfig()
    comp = indices_for_step(make_comp_indices(make_plan(unet.config, lf, x.shape), 1), 0)
    programs["unet dense"] = (lambda p, x, g, t, m: apply(p, x, 501, g, t, None, m, litefocus=None), (params, x, *text, mask))
    programs["unet litefocus"] = (
        lambda p, x, g, t, m, c: apply(p, x, 501, g, t, None, m, comp_indices=c, litefocus=lf),
        (params, x, *text, mask, comp),
    )
    out = {}
    for name, (fn, args) in programs.items():
        hlo = jax.jit(fn).lower(*args).compile().as_text()
        out[name] = hashlib.sha256(_canonical(hlo).encode()).hexdigest()[:16]
    return out


def _run(tree: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, __file__, "--worker"], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{tree}: {proc.stderr[-2000:]}")
    return dict(line.split("=", 1) for line in proc.stdout.split() if "=" in line)


def _revision(rev: str | None, scratch: Path) -> Path:
    if rev is None:
        return ROOT
    tree = scratch / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(tree), rev], check=True)
    return tree


def main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        print(" ".join(f"{k.replace(' ', '_')}={v}" for k, v in _hashes().items()))
        return 0
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        trees = [_revision(rev, Path(scratch)) for rev in (argv + [None])[:2]]
        try:
            a, b = (_run(tree) for tree in trees)
        finally:
            for tree in trees:
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    same = True
    for name in PROGRAMS:
        key = name.replace(" ", "_")
        same &= a[key] == b[key]
        print(f"{name:20s} {a[key]}  {b[key]}  {'same' if a[key] == b[key] else 'DIFFERENT'}")
    print("identical CPU programs" if same else "the CPU programs differ: rerun the CPU benchmarks")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
