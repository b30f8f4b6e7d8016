"""The PyTorch / NumPy references of the evaluation metrics and networks, loaded without their side effects.

- audioldm_eval 0.0.3: its metric files and its PANNs `models.py`, verbatim copies in `audioldm_eval_0_0_3/` (its
  README says why: the package's own dependencies cannot be installed here), loaded as stand-alone modules.
- audioldm_eval's `Cnn14.__init__` downloads and loads the official checkpoint; `cnn14_reference` builds it with the
  load stubbed out (random weights, then randomised here).
- torchvggish 0.2 (PyPI): `_vgg(postprocess=False)` without weights; `vggish_input.waveform_to_examples` is the
  front end.

A missing package makes these raise ImportError, so the parity tests fail (never skip).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path

VENDORED = Path(__file__).with_name("audioldm_eval_0_0_3")  # verbatim copies, see its README.md


def audioldm_eval_module(relative: str) -> types.ModuleType:
    """Load e.g. "metrics/fid.py" of audioldm_eval 0.0.3 (its verbatim copy) as a stand-alone module."""
    name = "_ref_audioldm_eval_" + relative.replace("/", "_").removesuffix(".py")
    if name in sys.modules:
        return sys.modules[name]
    file = VENDORED / (relative.replace("/", "_") + ".txt")
    loader = importlib.machinery.SourceFileLoader(name, str(file))
    spec = importlib.util.spec_from_loader(name, loader, origin=str(file))
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules[name] = module
    return module


def _panns_models() -> types.ModuleType:
    """audioldm_eval's `feature_extractors/panns/models.py`; its one intra-package import (pytorch_utils) is served
    from the stand-alone copy."""
    utils = audioldm_eval_module("feature_extractors/panns/pytorch_utils.py")
    saved = {
        k: sys.modules.get(k)
        for k in ("audioldm_eval", "audioldm_eval.feature_extractors", "audioldm_eval.feature_extractors.panns")
    }
    saved["audioldm_eval.feature_extractors.panns.pytorch_utils"] = sys.modules.get(
        "audioldm_eval.feature_extractors.panns.pytorch_utils"
    )
    try:
        for k in saved:
            if k.endswith("pytorch_utils"):
                sys.modules[k] = utils
            elif saved[k] is None:
                sys.modules[k] = types.ModuleType(k)
        return audioldm_eval_module("feature_extractors/panns/models.py")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)


# audioldm_eval.eval.EvaluationHelper's two Cnn14 settings
CNN14_SETTINGS = {
    16000: dict(sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527),
    32000: dict(sample_rate=32000, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000, classes_num=527),
}


def cnn14_reference(sample_rate: int, tmp_path):
    """audioldm_eval's Cnn14 (features "2048" and "logits") in eval mode with random weights and BN statistics."""
    import torch

    models = _panns_models()
    ckpt = Path(tmp_path) / "ckpt"
    ckpt.mkdir(exist_ok=True)
    (ckpt / "Cnn14_mAP=0.431.pth").touch()  # its download check looks for this file in the working directory
    cwd, load, load_sd = os.getcwd(), torch.load, models.Cnn14.load_state_dict
    try:
        os.chdir(tmp_path)
        torch.load = lambda *a, **k: {"model": None}
        models.Cnn14.load_state_dict = lambda self, *a, **k: None
        model = models.Cnn14(features_list=["2048", "logits"], **CNN14_SETTINGS[sample_rate])
    finally:
        os.chdir(cwd)
        torch.load, models.Cnn14.load_state_dict = load, load_sd
    # torch's default init already gives random conv / linear weights; make the BatchNorms non-trivial too
    g = torch.Generator().manual_seed(sample_rate)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith(".bias") and "bn" in name:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith(".weight") and "bn" in name:
                t.copy_(1.0 + torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1 + (-30.0 if name.startswith("bn0") else 0.0))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + (100.0 if name.startswith("bn0") else 0.5))
            elif name in ("fc1.bias", "fc_audioset.bias"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model.eval()


def vggish_reference():
    """torchvggish 0.2's VGG without weights (postprocess off) with the last ReLU removed, as audioldm_eval's FAD
    uses it, randomised; plus its front end `waveform_to_examples`."""
    import torch
    from torchvggish import torchvggish, vggish_input

    model = torchvggish._vgg(postprocess=False)
    model.embeddings = torch.nn.Sequential(*list(model.embeddings.children())[:-1])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * ((2.0 / fan_in) ** 0.5 if p.ndim > 1 else 0.05))
    return model.eval(), vggish_input.waveform_to_examples
