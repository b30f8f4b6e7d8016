"""The issue's speed targets, evaluated on one run's own numbers (PASS when value >= threshold; MISSING when a
measurement is absent or failed)."""

from __future__ import annotations

from litefocus_jax.tools.bench.results import JAX_DENSE, JAX_LF, TORCH_DENSE, best_time, select, speedup


def _target(name: str, value: float | None, threshold: float, detail: str) -> dict:
    status = "MISSING" if value is None else "PASS" if value >= threshold else "FAIL"
    return dict(name=name, status=status, value=value, threshold=threshold, detail=detail)


def _at(ms, scope, seconds=80.0, **kw):
    return [m for m in ms if m["scope"] == scope and m["seconds"] == seconds and all(m.get(k) == v for k, v in kw.items())]


def check_targets(report: dict) -> list[dict]:
    """The issue's targets, evaluated on this run's own numbers (value >= threshold passes)."""
    ms = report["measurements"]
    if report["device"]["backend"] == "cpu":
        unet, attn = _at(ms, "unet"), _at(ms, "attention")
        jax_over_torch = speedup(unet, JAX_DENSE, TORCH_DENSE)
        return [
            _target("CPU UNet 80 s: LiteFocus >= 1.5x JAX dense", speedup(unet, JAX_LF, JAX_DENSE), 1.5, "speedup"),
            _target(
                "CPU UNet 80 s: LiteFocus faster than diffusers SDPA dense", speedup(unet, JAX_LF, TORCH_DENSE), 1.0, "speedup"
            ),
            _target(
                "CPU UNet 80 s: JAX dense within 10% of diffusers SDPA dense",
                jax_over_torch,
                1 / 1.1,
                "diffusers time / JAX time; >= 1/1.1 means JAX dense is at most 10% slower",
            ),
            _target("CPU level-1 attention 80 s: LiteFocus >= 3.5x JAX dense", speedup(attn, JAX_LF, JAX_DENSE), 3.5, "speedup"),
        ]
    unet, e2e = _at(ms, "unet"), _at(ms, "e2e", scheduler="ddim", steps=200)
    fits = [m for m in select(_at(ms, "e2e", seconds=320.0), **JAX_LF) if m["status"] == "ok"]
    return [
        _target(
            "GPU UNet 80 s: LiteFocus >= 1.5x JAX cuDNN dense",
            speedup(unet, JAX_LF, dict(JAX_DENSE, kernel="cudnn")),
            1.5,
            "speedup",
        ),
        _target("GPU UNet 80 s: LiteFocus >= 1.8x diffusers SDPA", speedup(unet, JAX_LF, TORCH_DENSE), 1.8, "speedup"),
        _target("GPU e2e 80 s, 200 DDIM steps: LiteFocus >= 1.5x JAX dense", speedup(e2e, JAX_LF, JAX_DENSE), 1.5, "speedup"),
        _target(
            "GPU 320 s generation (e2e, LiteFocus) fits in memory",
            1.0 if fits else (0.0 if _at(ms, "e2e", 320.0) else None),
            1.0,
            "1 = an e2e LiteFocus run at 320 s finished",
        ),
    ]


def print_targets(targets: list[dict]) -> None:
    for t in targets:
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        print(f"{t['status']:7s} {t['name']}  ({t['detail']}: {value}, needs >= {t['threshold']:.3g})")


# The stretch goal: 80 s of audio end to end (batch 1, bf16) within these seconds, LiteFocus.
STRETCH = (("ddim", 200, 3.0), ("dpmsolver++", 25, 0.5))


def stretch_targets(report: dict) -> list[dict]:
    """The GPU stretch targets (value = time limit / fastest JAX LiteFocus e2e run time at 80 s; PASS when >= 1)."""
    out = []
    for scheduler, steps, limit in STRETCH:
        t = best_time(_at(report["measurements"], "e2e", scheduler=scheduler, steps=steps), **JAX_LF)
        out.append(
            _target(
                f"GPU stretch: 80 s end to end, {steps} {scheduler} steps, LiteFocus < {limit:g} s",
                None if t is None else limit / t,
                1.0,
                f"{limit:g} s / run time (denoising + VAE decode + vocoder)",
            )
        )
    return out
