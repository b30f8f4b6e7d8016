"""What the measurements say: output agreement between implementations run on identical inputs, and the best
times and speedups that the report and the target checks quote."""

from __future__ import annotations

import numpy as np


def _comparable(m: dict, ref: dict) -> bool:
    """Outputs are comparable when inputs and weights are identical: same framework (same seeded weights),
    or any framework in the attention scope (identical q, k, v and index)."""
    return m["scope"] == "attention" or m["impl"]["framework"] == ref["impl"]["framework"]


def _same_algorithm(m: dict, ref: dict) -> bool:
    return (m["impl"]["attention"], m["impl"]["duplicates"]) == (ref["impl"]["attention"], ref["impl"]["duplicates"])


def _reference(m: dict, group: list[dict], same: bool) -> dict | None:
    """same: the same algorithm in a comparable run, the torch peer first (independent code). Otherwise (a
    LiteFocus output against dense): the first dense run of the same framework."""
    if same:
        want = [r for r in group if r is not m and _comparable(m, r) and _same_algorithm(m, r)]
        want.sort(key=lambda r: r["impl"]["framework"] != "torch")
    else:
        want = [r for r in group if r["impl"]["framework"] == m["impl"]["framework"] and r["impl"]["attention"] == "dense"]
    return want[0] if want else None


def _difference(a_path: str, b_path: str) -> tuple[float, float]:
    a, b = np.load(a_path).astype(np.float64), np.load(b_path).astype(np.float64)
    diff = a - b
    return float(np.abs(diff).max()), float(np.linalg.norm(diff) / max(np.linalg.norm(b), 1e-30))


def agreement(results: list[dict]) -> list[dict]:
    """Output differences between implementations run on identical inputs.

    expected "equal": the same algorithm (e.g. JAX LiteFocus official vs the released algorithm in torch
    on the same q, k, v and index; JAX dense vs torch SDPA): only rounding. expected "differs": LiteFocus
    vs dense, the size of the sparse approximation (random weights: no quality meaning).
    """
    groups: dict[tuple, list] = {}
    for m in results:
        if m["status"] == "ok" and m.get("_output"):
            groups.setdefault((m["scope"], m["seconds"], m["scheduler"], m["steps"]), []).append(m)
    out, seen = [], set()
    for group in groups.values():
        for m in group:
            for same in (True, False):
                if not same and m["impl"]["attention"] == "dense":
                    continue
                ref = _reference(m, group, same)
                if ref is not None and frozenset((id(m), id(ref))) not in seen:
                    seen.add(frozenset((id(m), id(ref))))
                    err, rel = _difference(m["_output"], ref["_output"])
                    out.append(
                        dict(
                            scope=m["scope"],
                            seconds=m["seconds"],
                            scheduler=m["scheduler"],
                            steps=m["steps"],
                            impl=m["id"],
                            reference=ref["id"],
                            expected="equal" if same else "differs",
                            max_abs_diff=err,
                            rel_l2_diff=rel,
                        )
                    )
    return out


def select(ms, **want):
    return [m for m in ms if all(m["impl"].get(k) == v for k, v in want.items())]


JAX_DENSE = dict(framework="jax", attention="dense")
JAX_LF = dict(framework="jax", attention="litefocus", duplicates="official")
TORCH_DENSE = dict(framework="torch", attention="dense")


def best_time(ms, **want) -> float | None:
    """Fastest median run time among the ok measurements matching `want` (over JAX kernels)."""
    times = [m["run_s"] for m in select(ms, **want) if m["status"] == "ok"]
    return min(times) if times else None


def speedup(ms, faster: dict, slower: dict) -> float | None:
    a, b = best_time(ms, **faster), best_time(ms, **slower)
    return None if a is None or b is None else b / a
