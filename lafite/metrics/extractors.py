"""Feature extractors that torch-fidelity runs for FID, KID and IS.

Two kinds exist:

* ``inception-v3-compat``, torch-fidelity's own port of the TF Inception used by every paper
  (paper scale). Its weights come from ``eval.inception_weights`` or from torch hub's checkpoint
  folder; offline without either, one :class:`UserError` names the file and where to put it,
  before any image is generated (torch-fidelity itself would fail with a bare ``URLError``).
* any module with ``features(x_uint8)`` and ``class_logits(x_uint8)`` (the world's inspector at
  mini and smoke scale), exposed under one registered torch-fidelity name. torch-fidelity builds
  extractors from a class and its keyword arguments, and a name can be registered only once per
  process, so modules are kept in a process-wide table and the extractor finds its module through
  the ``feature_extractor_weights_path`` argument, which carries the table key.

The world's small CLIP is never offered here: it is the L_ConG training signal, and a generator
learns to please it, so scores computed with it could be gamed.
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from lafite.errors import UserError

INCEPTION_NAME = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)
# The one torch-fidelity name under which every in-process module extractor is registered.
MODULE_EXTRACTOR_NAME = "lafite-module"
FEATURES_LAYER = "features"
LOGITS_LAYER = "logits"


@runtime_checkable
class FeatureModule(Protocol):
    """What an in-process extractor needs (the world's inspector satisfies it)."""

    def features(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """(N, F) embedding of uint8 NCHW images, for FID and KID."""
        ...

    def class_logits(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """(N, K) unnormalised logits, for IS (torch-fidelity applies the softmax)."""
        ...


@dataclass(frozen=True)
class ExtractorChoice:
    """A feature extractor ready for ``torch_fidelity.calculate_metrics``.

    ``tf_name`` is the registered torch-fidelity name, ``weights_path`` what is passed as
    ``feature_extractor_weights_path`` and ``id`` a stable string naming the weights, for cache
    names (torch-fidelity's own cache files only carry ``tf_name``).
    """

    tf_name: str
    weights_path: str | None
    id: str
    fid_layer: str
    isc_layer: str

    def calculate_metrics_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {
            "feature_extractor": self.tf_name,
            "feature_layer_fid": self.fid_layer,
            "feature_layer_kid": self.fid_layer,
            "feature_layer_isc": self.isc_layer,
        }
        if self.weights_path is not None:
            kwargs["feature_extractor_weights_path"] = self.weights_path
        return kwargs


_MODULES: dict[str, nn.Module] = {}
_REGISTER_LOCK = threading.Lock()
_registered = False


def _ensure_registered() -> None:
    """Register the module extractor class with torch-fidelity once per process."""
    global _registered
    with _REGISTER_LOCK:
        if _registered:
            return
        from torch_fidelity import register_feature_extractor
        from torch_fidelity.feature_extractor_base import FeatureExtractorBase
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

        class ModuleExtractor(FeatureExtractorBase):
            """torch-fidelity view of a module from the table (features and class logits)."""

            def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
                super().__init__(name, features_list)
                key = feature_extractor_weights_path
                if key not in _MODULES:
                    raise RuntimeError(f"no feature module registered under key {key!r}")
                self.module = _MODULES[key]

            def forward(self, x):
                out = {}
                if FEATURES_LAYER in self.features_list:
                    out[FEATURES_LAYER] = self.module.features(x).float()
                if LOGITS_LAYER in self.features_list:
                    out[LOGITS_LAYER] = self.module.class_logits(x).float()
                return tuple(out[name] for name in self.features_list)

            @staticmethod
            def get_provided_features_list():
                return (FEATURES_LAYER, LOGITS_LAYER)

            @staticmethod
            def get_default_feature_layer_for_metric(metric):
                return {
                    "isc": LOGITS_LAYER,
                    "fid": FEATURES_LAYER,
                    "kid": FEATURES_LAYER,
                    "prc": FEATURES_LAYER,
                }[metric]

            @staticmethod
            def can_be_compiled():
                return False

            @staticmethod
            def get_dummy_input_for_compile():
                return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

        if MODULE_EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(MODULE_EXTRACTOR_NAME, ModuleExtractor)
        _registered = True


def module_fingerprint(module: nn.Module) -> str:
    """12 hex digits naming a module's weights (class name, parameter and buffer values)."""
    digest = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def module_extractor(module: nn.Module, label: str = "inspector") -> ExtractorChoice:
    """Expose ``module`` (``features`` + ``class_logits``) to torch-fidelity.

    The id is ``<label>-<weights hash>``, so reference statistics cached for one inspector are
    never reused for a retrained one.
    """
    if not isinstance(module, FeatureModule):
        raise TypeError(
            f"{type(module).__name__} lacks features(x_uint8) and class_logits(x_uint8)"
        )
    _ensure_registered()
    ident = f"{label}-{module_fingerprint(module)}"
    _MODULES[ident] = module
    return ExtractorChoice(
        tf_name=MODULE_EXTRACTOR_NAME,
        weights_path=ident,
        id=ident,
        fid_layer=FEATURES_LAYER,
        isc_layer=LOGITS_LAYER,
    )


def inception_hub_path() -> Path:
    """Where torch hub (and so torch-fidelity) looks for the Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


_FILE_IDS: dict[tuple[str, int, int], str] = {}


def _file_id(path: Path) -> str:
    """12 hex digits of the file's sha256, remembered per (path, size, mtime): periodic
    evaluation should not re-hash 100 MB of Inception weights every time."""
    stat = path.stat()
    key = (os.fspath(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_IDS:
        _FILE_IDS[key] = _hash_file(path)
    return _FILE_IDS[key]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def inception_extractor(weights: str = "", *, download: bool = True) -> ExtractorChoice:
    """torch-fidelity's ``inception-v3-compat`` with a resolved local weights file.

    Order: ``weights`` (the ``eval.inception_weights`` field), then the torch hub checkpoint
    folder, then one download attempt into that folder. Offline without a file this raises one
    :class:`UserError` naming the file and both places it may go.
    """
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(
                f"eval.inception_weights: no file at {path}. Point it at a copy of "
                f"{INCEPTION_FILE} (torch-fidelity's Inception weights, from {INCEPTION_URL})."
            )
    else:
        path = inception_hub_path()
        if not path.is_file() and download:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(INCEPTION_URL, str(path), progress=False)
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                raise UserError(
                    f"FID/KID/IS need torch-fidelity's Inception weights {INCEPTION_FILE} and "
                    f"they could not be downloaded ({err}). Download {INCEPTION_URL} on a "
                    f"machine with internet and put it at {path} "
                    f"($TORCH_HOME/hub/checkpoints/), or set eval.inception_weights to its path."
                ) from None
        if not path.is_file():
            raise UserError(
                f"FID/KID/IS need torch-fidelity's Inception weights: put {INCEPTION_FILE} at "
                f"{path} ($TORCH_HOME/hub/checkpoints/) or set eval.inception_weights."
            )
    return ExtractorChoice(
        tf_name=INCEPTION_NAME,
        weights_path=os.fspath(path),
        id=f"inception-{_file_id(path)}",
        fid_layer="2048",
        isc_layer="logits_unbiased",
    )


__all__ = [
    "ExtractorChoice",
    "FeatureModule",
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "MODULE_EXTRACTOR_NAME",
    "inception_extractor",
    "inception_hub_path",
    "module_extractor",
    "module_fingerprint",
]
