"""The 0.1 module paths (`litefocus_jax.attention`, `litefocus_jax.cli`, ...), kept importable for one release.

Each old path is a thin module that looks names up in the modules that now hold them, and warns once with
`DeprecationWarning` naming the new path. Nothing in the library imports these; remove this file in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED: dict[str, tuple[str, ...]] = {
    "attention": ("kernels.attention", "kernels.chunked"),
    "loading": ("weights.loading", "models.unet_audioldm2"),
    "audio": ("features.audio",),
    "presets": ("models.presets",),
    "pipeline_audioldm2": ("pipelines.audioldm2.pipeline_audioldm2", "utils.io"),
    "conversion": ("pipelines.audioldm2.conversion", "commands.convert"),
    "cli": ("commands.cli", "utils.cli_args", "pipelines.audioldm2.tiny"),
    "batch": ("tools.batch",),
    "demo": ("tools.demo",),
    "bench": tuple(
        f"tools.bench.{m}"
        for m in (
            "cli",
            "specs",
            "timing",
            "jax_runners",
            "torch_peers",
            "environment",
            "isolate",
            "results",
            "report",
            "targets",
        )
    ),
    "torch_reference": ("tools.torch_reference",),
    "analysis": ("research.analysis",),
    "training": ("research.training", "research.training_data"),
}
_PACKAGE = __name__.rpartition(".")[0]


class _MovedModule(types.ModuleType):
    def __init__(self, name: str, targets: tuple[str, ...]):
        super().__init__(name, f"Moved: see {', '.join(targets)}.")
        self.__targets = targets

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self.__targets)}) has no attribute {attr!r}")

    def __dir__(self):
        return sorted({n for t in self.__targets for n in dir(importlib.import_module(t)) if not n.startswith("_")})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, short = fullname.rpartition(".")
        if prefix == _PACKAGE and short in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        short = spec.name.rpartition(".")[2]
        return _MovedModule(spec.name, tuple(f"{_PACKAGE}.{t}" for t in MOVED[short]))

    def exec_module(self, module):
        new = ", ".join(module._MovedModule__targets)
        warnings.warn(f"{module.__name__} moved to {new}; the old path goes away in 0.3.", DeprecationWarning, stacklevel=3)


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
