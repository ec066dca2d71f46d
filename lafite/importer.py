"""The authors' checkpoints: official LAFITE ``network-snapshot-*.pkl`` files, read without
running the code stored in them.

An official snapshot is a plain pickle of ``dict(G=..., D=..., G_ema=..., augment_pipe=...,
training_set_kwargs=...)`` written by StyleGAN2-ADA's training loop. Every network in it is a
``torch_utils.persistence`` record: the pickle calls
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = dict(type='class',
version=6, module_src=<the whole source of training/networks.py>, class_name=..., state=<the
module's __dict__>)``, and the official loader ``exec``\\ s ``module_src``. That is arbitrary code
from a file downloaded from the internet, so it is never run here: :class:`SnapshotUnpickler`
resolves only the handful of globals such a file legitimately names (the persistence hook,
torch's tensor and storage rebuilders, ``collections.OrderedDict``, ``dnnlib.util.EasyDict``,
NumPy's array and scalar constructors, ``set``), each replaced by a function here that builds
plain data; any other global stops the load before anything is called, with a message naming
the file and the global. The module states are then read as data: parameters and buffers by
name, shapes checked against our networks (``lafite/model``), and the layout (resolution,
channels, condition dimension f_dim, mapping layers, condition structure) detected from the
tensors themselves.

The official parameter names and the layout are in reference/official-lafite.md section 2; the
pickle format is ``torch_utils/persistence.py`` of NVlabs/stylegan2-ada-pytorch.

An import is recorded like one of our runs (``record_import``): a lafite-repro checkpoint under
``<workspace>/models/imported/<name>/`` and an MLflow run tagged ``lafite.role = imported`` with
the source's sha256 and the detected configuration, so that ``evaluate --run``, ``generate --run``,
``train.init_checkpoint`` (fine-tuning, zero-shot) and a spec row's ``import:`` use it.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import pickle
import pickletools
import re
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lafite.errors import UserError

if TYPE_CHECKING:
    import torch

    from lafite.config import ModelConfig, RunConfig
    from lafite.workspace import Workspace

IMPORTED_DIR = "imported"
IMPORT_META = "import.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

# The persistence format this reader knows (torch_utils/persistence.py `_version`).
PERSISTENCE_VERSION = 6


class SnapshotError(UserError):
    """An official snapshot that cannot be imported; the message names the file and why."""


# -- the restricted unpickler ----------------------------------------------------------------


@dataclass
class PersistentRecord:
    """One ``torch_utils.persistence`` object, as data: its class name and its ``__dict__``.

    The module source that came with it is kept only as a checksum (it is never run).
    """

    class_name: str
    state: dict[str, Any]
    version: int
    source_sha256: str


class EasyDict(dict):
    """Stands in for ``dnnlib.util.EasyDict`` (a dict with attribute access) as plain data."""


class _NoData:
    """A storage whose bytes were skipped (:func:`scan_snapshot` reads shapes only)."""


@dataclass(frozen=True)
class ShapeOnly:
    """A tensor of a shapes-only scan: its shape, no values."""

    shape: tuple[int, ...]


class _Refused(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> Any:
    """torch._utils._rebuild_tensor_v2, without backward hooks or other extras."""
    if isinstance(storage, _NoData):
        return ShapeOnly(tuple(int(s) for s in size))
    import torch

    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise _Refused(f"a tensor built from a {type(storage).__name__}, not a storage")
    if not (isinstance(offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise _Refused("a tensor with malformed size or stride")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False,
                                           collections.OrderedDict())


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    """torch._utils._rebuild_parameter: the tensor itself (no Parameter, no hooks)."""
    import torch

    if not isinstance(data, torch.Tensor | ShapeOnly):
        raise _Refused(f"a parameter holding a {type(data).__name__}")
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, handle: Any, shapes_only: bool) -> None:
        super().__init__(handle)
        self.shapes_only = shapes_only

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise _Refused(f"{module}.{name}")
        if allowed == "storage":
            return self._storage
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused(f"a persistent reference {str(pid)[:60]!r} (a torch.save file, not a "
                       "StyleGAN2-ADA snapshot)")

    def _storage(self, data: Any) -> Any:
        """torch.storage._load_from_bytes: the storage's own torch.save bytes, read weights-only."""
        if not isinstance(data, bytes):
            raise _Refused(f"a storage built from a {type(data).__name__}")
        if self.shapes_only:
            return _NoData()
        from lafite.checkpoint import read_weights_only

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation
            storage = read_weights_only(io.BytesIO(data), "cpu")  # type: ignore[arg-type]
        import torch

        if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
            raise _Refused("a storage entry that holds no storage")
        return storage


def _persistent_record(meta: Any) -> PersistentRecord:
    """torch_utils.persistence._reconstruct_persistent_obj, minus ``exec(module_src)``."""
    if not isinstance(meta, dict):
        raise _Refused("a persistence record that is not a dict")
    source = meta.get("module_src")
    class_name = meta.get("class_name")
    state = meta.get("state")
    if meta.get("type") != "class" or not isinstance(source, str) or not isinstance(class_name, str):
        raise _Refused("a persistence record without type 'class', module_src and class_name")
    if not isinstance(state, dict):
        raise _Refused(f"a persistence record of {class_name} whose state is not a dict")
    return PersistentRecord(class_name, dict(state), int(meta.get("version") or 0),
                            hashlib.sha256(source.encode()).hexdigest()[:16])


def _numpy_allowed() -> dict[tuple[str, str], Any]:
    from numpy import dtype, ndarray

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): ndarray, ("numpy", "dtype"): dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = _reconstruct
        out[(mod, "scalar")] = scalar
    return out


# Every global an official snapshot may name, each mapped to a constructor of plain data.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_record,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): "storage",
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    **_numpy_allowed(),
}


def read_snapshot(path: Path, shapes_only: bool = False) -> dict[str, Any]:
    """The top-level dict of an official snapshot, its networks as :class:`PersistentRecord`.

    Nothing stored in the file is run: an unknown global is an :class:`SnapshotError` raised
    before it is called. ``shapes_only`` skips the tensors' bytes (tensors are ShapeOnly).
    """
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"{path}: no such file (give the path of an official LAFITE "
                           "network-snapshot-*.pkl)")
    if zipfile.is_zipfile(path):
        raise SnapshotError(
            f"{path} is a zip archive (a torch.save checkpoint?), not an official StyleGAN2-ADA "
            "network snapshot (a plain pickle). A lafite-repro checkpoint needs no import: give "
            "it to --run or train.init_checkpoint directly"
        )
    try:
        with open(path, "rb") as handle:
            data = _Unpickler(handle, shapes_only).load()
    except _Refused as exc:
        raise SnapshotError(
            f"{path} is refused: it refers to {exc.what}, which is neither a tensor, a NumPy "
            "array, a plain container nor a StyleGAN2-ADA persistence record. Nothing in it was "
            "run and nothing was imported; loading it with pickle would run that object"
        ) from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, RuntimeError, OverflowError, MemoryError) as exc:
        size = path.stat().st_size
        what = ("it ends early (truncated: an interrupted download or copy?)"
                if isinstance(exc, EOFError) or "truncated" in str(exc) or "ran out" in str(exc)
                else f"it is not a readable pickle ({type(exc).__name__}: "
                     f"{' '.join(str(exc).split())[:200]})")
        raise SnapshotError(
            f"{path} ({size:,} bytes) cannot be read: {what}. Nothing was imported; download "
            "the snapshot again"
        ) from None
    if not isinstance(data, dict) or not any(
            isinstance(data.get(k), PersistentRecord) for k in ("G", "D", "G_ema")):
        kind = type(data).__name__
        keys = ", ".join(map(str, list(data)[:8])) if isinstance(data, dict) else ""
        raise SnapshotError(
            f"{path} is a pickle of a {kind}{f' with keys {keys}' if keys else ''}, not a "
            "StyleGAN2-ADA network snapshot (a dict with networks G, D, G_ema)"
        )
    return data


def is_official_snapshot(path: Path) -> bool:
    """Whether ``path`` looks like an official snapshot (a plain pickle whose first globals
    include the persistence hook), judged from its first opcodes; nothing is unpickled."""
    try:
        with open(path, "rb") as handle:
            if handle.read(1) != b"\x80":
                return False
            handle.seek(0)
            strings: list[str] = []
            for count, (opcode, arg, _) in enumerate(pickletools.genops(handle)):
                if count > 2000:
                    return False
                if opcode.name == "GLOBAL" and isinstance(arg, str):
                    if arg.startswith("torch_utils.persistence "):
                        return True
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    if strings[-2] == "torch_utils.persistence":
                        return True
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # noqa: BLE001 - not a pickle (or cut short early): not one
        return False
    return False


# -- the layout --------------------------------------------------------------------------------


def _flatten(record: PersistentRecord, prefix: str = "",
             tensors: dict[str, Any] | None = None,
             records: dict[str, PersistentRecord] | None = None
             ) -> tuple[dict[str, Any], dict[str, PersistentRecord]]:
    """Parameters and buffers by dotted name (as ``state_dict`` names them), and every
    sub-record by its prefix ("" for the root)."""
    tensors = {} if tensors is None else tensors
    records = {} if records is None else records
    records[prefix.rstrip(".")] = record
    state = record.state
    for kind in ("_parameters", "_buffers"):
        for key, value in (state.get(kind) or {}).items():
            if value is not None:
                tensors[prefix + key] = value
    for key, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise _Layout(f"{prefix}{key} is a {type(child).__name__}, not a persistent network "
                          "layer")
        _flatten(child, f"{prefix}{key}.", tensors, records)
    return tensors, records


class _Layout(Exception):
    """The snapshot's networks are not LAFITE's layout (message: what was found)."""


@dataclass(frozen=True)
class Detected:
    """What an official snapshot holds, read from its tensors (and recorded with the import)."""

    resolution: int
    z_dim: int
    w_dim: int
    f_dim: int  # the condition feature's dimension (CLIP ViT-B/32: 512)
    cond_dim: int  # width of each layer's condition code (official: 512)
    mapping_layers: int
    channel_base: int
    channel_max: int
    channels: dict[int, int]  # generator feature maps per resolution
    structure: int  # the official condition structure (2 = concat [MLP(h), w], the default)
    cond_form: str  # our name of it
    cond_lr_mult: float
    d_semantic_head: bool  # official D use_fts
    d_normalize_fs: bool  # official D use_norm
    mbstd_group: int
    conv_clamp: float | None  # official conv_clamp (not applied by our layers)
    num_fp16_res: int  # official blocks run in FP16 on GPU (ours run fp32 or bf16)
    has_D: bool
    has_G: bool

    def model_overrides(self) -> dict[str, Any]:
        """Dotted RunConfig keys that make our networks this layout."""
        return {
            "model.z_dim": self.z_dim, "model.w_dim": self.w_dim,
            "model.mapping_layers": self.mapping_layers,
            "model.channel_base": self.channel_base, "model.channel_max": self.channel_max,
            "model.cond_form": self.cond_form, "model.cond_dim": self.cond_dim,
            "model.cond_lr_mult": self.cond_lr_mult, "model.d_semantic": "batch-sum",
            "model.d_normalize_fs": self.d_normalize_fs,
            "model.d_semantic_head": self.d_semantic_head,
            "model.mbstd_group": self.mbstd_group, "data.resolution": self.resolution,
        }

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["channels"] = {str(k): v for k, v in self.channels.items()}
        return out


_STRUCTURE_FORM = {2: "official", 1: "scale-bias", 0: "sum"}


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def _structure(layer: str, names: set[str]) -> int:
    """The official condition structure of one modulated layer, from the tensors it owns."""
    has = {part for part in ("affine", "pre_0", "pre_1", "affine_0", "scale_layer_0",
                             "bias_layer_0") if f"{layer}.{part}.weight" in names}
    if {"scale_layer_0", "bias_layer_0", "affine"} <= has:
        return 1
    if {"pre_0", "pre_1", "affine_0"} <= has:
        return 0 if "affine" in has else 2
    if has == {"affine"}:
        raise _Layout(
            f"G's layer {layer} has only the unconditional style affine (no pre_0/pre_1/affine_0 "
            "condition layers): a plain StyleGAN2 generator, not LAFITE's conditional one"
        )
    raise _Layout(f"G's layer {layer} holds none of LAFITE's condition layers "
                  f"({', '.join(sorted(has)) or 'no style layers at all'})")


def detect(G: PersistentRecord, D: PersistentRecord | None, G_has: bool = True) -> Detected:
    """The layout of an official generator (and discriminator) record; _Layout if it is not
    LAFITE's."""
    if G.class_name != "Generator":
        raise _Layout(f"G_ema is a {G.class_name!r}, not a Generator")
    tensors, records = _flatten(G)
    names = set(tensors)
    if "mapping.embed.weight" in names or int(G.state.get("c_dim") or 0) != 0:
        raise _Layout("G is class-conditional (c_dim > 0); LAFITE conditions on features only")
    if int(G.state.get("img_channels", 3)) != 3:
        raise _Layout(f"G makes {G.state.get('img_channels')}-channel images, not RGB")
    blocks = sorted(int(m.group(1)) for n in records
                    if (m := re.fullmatch(r"synthesis\.b(\d+)", n)))
    if not blocks:
        raise _Layout("G has no synthesis blocks synthesis.b4, synthesis.b8, ...")
    resolution = blocks[-1]
    expected = [2**i for i in range(2, int(math.log2(resolution)) + 1)]
    if blocks != expected:
        raise _Layout(f"G's synthesis blocks are at {blocks}, not at every power of two to "
                      f"{resolution}")
    for res in blocks:
        arch = records[f"synthesis.b{res}"].state.get("architecture", "skip")
        if arch != "skip":
            raise _Layout(f"G's block b{res} has architecture {arch!r}; LAFITE's is 'skip'")
    mapping = sorted(int(m.group(1)) for n in names
                     if (m := re.fullmatch(r"mapping\.fc(\d+)\.weight", n)))
    if not mapping or mapping != list(range(len(mapping))):
        raise _Layout("G has no mapping network mapping.fc0, mapping.fc1, ...")
    z_dim = _shape(tensors["mapping.fc0.weight"])[1]
    w_dim = _shape(tensors[f"mapping.fc{mapping[-1]}.weight"])[0]
    for i in mapping:
        out_features, in_features = _shape(tensors[f"mapping.fc{i}.weight"])
        if out_features != w_dim or (i and in_features != w_dim):
            raise _Layout(f"G's mapping layer fc{i} is {in_features}->{out_features}; ours need "
                          f"{w_dim} features in every layer after the first")
    layers = [f"synthesis.b{res}.{part}" for res in blocks
              for part in (("conv1", "torgb") if res == 4 else ("conv0", "conv1", "torgb"))]
    for layer in layers:
        if f"{layer}.weight" not in names:
            raise _Layout(f"G has no {layer} layer")
        if "torgb" not in layer and f"{layer}.noise_strength" not in names:
            raise _Layout(f"G's {layer} has no noise input (use_noise=False); ours always do")
    structures = {layer: _structure(layer, names) for layer in layers}
    kinds = sorted(set(structures.values()))
    if len(kinds) > 1:
        above = min(int(layer.split(".")[1][1:]) for layer, s in structures.items() if s == 1)
        raise _Layout(
            f"G mixes condition structures {kinds} (structure 1 from {above} px up: the official "
            "--change is below the resolution); lafite-repro networks use one form for every "
            "layer"
        )
    structure = kinds[0]
    first = layers[0]
    mlp = f"{first}.pre_0" if structure != 1 else f"{first}.scale_layer_0"
    hidden, f_dim = _shape(tensors[f"{mlp}.weight"])
    second = mlp[:-1] + "1"
    cond_dim = _shape(tensors[f"{second}.weight"])[0]
    if hidden != (f_dim + cond_dim) // 2:
        raise _Layout(f"G's {mlp} is {f_dim}->{hidden}; LAFITE's is f_dim->(f_dim+"
                      f"{cond_dim})//2")
    cond_lr_mult = float(records[mlp].state.get("bias_gain", 0.01))
    map_lr = float(records["mapping.fc0"].state.get("bias_gain", 0.01))
    if not math.isclose(map_lr, 0.01, rel_tol=1e-6):
        raise _Layout(f"G's mapping network has learning-rate multiplier {map_lr}; ours 0.01")
    for name, value in tensors.items():
        if name.endswith("resample_filter"):
            _check_filter(name, value)
    channels = {res: _shape(tensors[f"synthesis.b{res}.conv1.weight"])[0] for res in blocks}
    channel_max = max(channels.values())
    kwargs = G.state.get("synthesis_kwargs") or {}
    base = kwargs.get("channel_base") if isinstance(kwargs, dict) else None
    below = [res for res in blocks if channels[res] < channel_max]
    channel_base = int(base) if base else (channels[below[0]] * below[0] if below
                                           else channel_max * resolution)
    for res in blocks:
        if min(channel_base // res, channel_max) != channels[res]:
            raise _Layout(f"G's channels {channels} do not follow min(channel_base/res, "
                          "channel_max) for any channel_base")
    conv_clamp = records[f"synthesis.b{resolution}.conv1"].state.get("conv_clamp")
    fp16 = sum(bool(records[f"synthesis.b{res}"].state.get("use_fp16")) for res in blocks)
    d_head, d_norm, mbstd = True, False, 4
    if D is not None:
        if D.class_name != "Discriminator":
            raise _Layout(f"D is a {D.class_name!r}, not a Discriminator")
        d_tensors, d_records = _flatten(D)
        if "b4.fts.weight" not in d_tensors and D.state.get("use_fts", True):
            raise _Layout("D has no semantic head b4.fts (f_s): a plain StyleGAN2 "
                          "discriminator, not LAFITE's")
        d_head = bool(D.state.get("use_fts", True)) and "b4.fts.weight" in d_tensors
        d_norm = bool(D.state.get("use_norm", False))
        for name, rec in d_records.items():
            if re.fullmatch(r"b\d+", name) and name != "b4":
                if rec.state.get("architecture", "resnet") != "resnet":
                    raise _Layout(f"D's block {name} has architecture "
                                  f"{rec.state.get('architecture')!r}; LAFITE's is 'resnet'")
        if int(D.state.get("c_dim") or 0) or "mapping.fc0.weight" in d_tensors:
            raise _Layout("D is class-conditional (c_dim > 0); LAFITE's is not")
        std = d_records.get("b4.mbstd")
        if std is None:
            raise _Layout("D has no minibatch-stddev layer; ours always has one")
        group = std.state.get("group_size")
        if group is None or int(std.state.get("num_channels", 1)) != 1:
            raise _Layout(f"D's minibatch-stddev layer has group_size {group} and "
                          f"{std.state.get('num_channels')} channels; ours needs a fixed group "
                          "and one channel")
        mbstd = int(group)
        if d_head and _shape(d_tensors["b4.fts.weight"])[0] != f_dim:
            raise _Layout(f"D's semantic head b4.fts has {_shape(d_tensors['b4.fts.weight'])[0]} "
                          f"outputs but G conditions on {f_dim}")
        for name, value in d_tensors.items():
            if name.endswith("resample_filter"):
                _check_filter(f"D.{name}", value)
    return Detected(
        resolution=resolution, z_dim=z_dim, w_dim=w_dim, f_dim=f_dim, cond_dim=cond_dim,
        mapping_layers=len(mapping), channel_base=channel_base, channel_max=channel_max,
        channels=channels, structure=structure, cond_form=_STRUCTURE_FORM[structure],
        cond_lr_mult=cond_lr_mult, d_semantic_head=d_head, d_normalize_fs=d_norm,
        mbstd_group=mbstd, conv_clamp=float(conv_clamp) if conv_clamp is not None else None,
        num_fp16_res=fp16, has_D=D is not None, has_G=G_has,
    )


def _check_filter(name: str, value: Any) -> None:
    """Our layers hard-code StyleGAN2's [1,3,3,1] filter; the snapshot's must be that one."""
    if isinstance(value, ShapeOnly):
        return
    f = np.array([1.0, 3.0, 3.0, 1.0])
    expected = np.outer(f, f) / np.outer(f, f).sum()
    got = value.detach().cpu().double().numpy()
    if got.shape != expected.shape or not np.allclose(got, expected, atol=1e-6):
        raise _Layout(f"{name} is not StyleGAN2's [1,3,3,1] resampling filter")


# -- names: official -> ours -----------------------------------------------------------------

_STYLE = {
    2: {"pre_0": "style.cond.0", "pre_1": "style.cond.1", "affine_0": "style.affine"},
    0: {"affine": "style.style", "pre_0": "style.cond.0", "pre_1": "style.cond.1",
        "affine_0": "style.affine"},
    1: {"affine": "style.style", "scale_layer_0": "style.scale.0.0",
        "scale_layer_1": "style.scale.0.1", "scale_layer_2": "style.scale.1",
        "bias_layer_0": "style.shift.0.0", "bias_layer_1": "style.shift.0.1",
        "bias_layer_2": "style.shift.1"},
}


def generator_name(name: str, resolutions: list[int], structure: int) -> str | None:
    """Our state_dict name of an official generator tensor; None for one we drop (the
    resampling filters, checked to be StyleGAN2's)."""
    if name.endswith("resample_filter"):
        return None
    m = re.fullmatch(r"mapping\.fc(\d+)\.(weight|bias)", name)
    if m:
        return f"mapping.layers.{m.group(1)}.{m.group(2)}"
    if name == "mapping.w_avg":
        return name
    m = re.fullmatch(r"synthesis\.b(\d+)\.(.+)", name)
    if not m or int(m.group(1)) not in resolutions:
        return ""
    block = f"synthesis.blocks.{resolutions.index(int(m.group(1)))}"
    rest = m.group(2)
    if rest == "const":
        return f"{block}.const"
    m = re.fullmatch(r"(conv0|conv1|torgb)\.(\w+)\.(weight|bias)", rest)
    if m and m.group(2) in _STYLE[structure]:
        return f"{block}.{m.group(1)}.{_STYLE[structure][m.group(2)]}.{m.group(3)}"
    m = re.fullmatch(r"(conv0|conv1|torgb)\.(weight|bias|noise_strength|noise_const)", rest)
    if m:
        return f"{block}.{rest}"
    return ""


_D_EPILOGUE = {"conv": "conv", "fc": "fc", "out": "f_d", "fts": "f_s"}


def discriminator_name(name: str, resolutions: list[int]) -> str | None:
    """Our state_dict name of an official discriminator tensor (see :func:`generator_name`)."""
    if name.endswith("resample_filter"):
        return None
    m = re.fullmatch(r"b4\.(\w+)\.(weight|bias)", name)
    if m:
        return f"{_D_EPILOGUE[m.group(1)]}.{m.group(2)}" if m.group(1) in _D_EPILOGUE else ""
    m = re.fullmatch(r"b(\d+)\.(fromrgb|conv0|conv1|skip)\.(weight|bias)", name)
    if m and int(m.group(1)) in resolutions:
        return f"blocks.{resolutions.index(int(m.group(1)))}.{m.group(2)}.{m.group(3)}"
    return ""


def _mapped(record: PersistentRecord, module: torch.nn.Module, which: str,
            rename: Any) -> dict[str, Any]:
    """``record``'s tensors under our names, checked tensor for tensor against ``module``."""
    tensors, _ = _flatten(record)
    own = module.state_dict()
    out: dict[str, Any] = {}
    for name, value in tensors.items():
        ours = rename(name)
        if ours is None:
            continue
        if not ours or ours not in own:
            raise _Layout(f"{which}.{name} is not a tensor of LAFITE's layout")
        if _shape(value) != tuple(own[ours].shape):
            raise _Layout(f"{which}.{name} has shape {list(_shape(value))}; LAFITE's layout "
                          f"detected from the other tensors needs {list(own[ours].shape)}")
        out[ours] = value.detach().to(own[ours].dtype).clone() \
            if not isinstance(value, ShapeOnly) else value
    missing = [k for k in own if k not in out]
    if missing:
        raise _Layout(f"{which} has no tensor for our {missing[0]} ({len(missing)} missing)")
    return out


# -- the import --------------------------------------------------------------------------------


@dataclass
class Imported:
    """An official snapshot read into our networks' state dicts."""

    source: Path
    detected: Detected
    model: ModelConfig
    G: dict[str, Any]
    G_ema: dict[str, Any]
    D: dict[str, Any] | None
    params_G: int = 0
    params_D: int = 0
    seconds: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    def networks(self) -> tuple[torch.nn.Module, torch.nn.Module | None]:
        """Our (G_ema, D) with the imported weights (eval mode)."""
        from lafite.model import Discriminator, Generator

        G = Generator(self.model, self.detected.resolution, self.detected.f_dim)
        G.load_state_dict(self.G_ema)
        D = None
        if self.D is not None:
            D = Discriminator(self.model, self.detected.resolution, self.detected.f_dim)
            D.load_state_dict(self.D)
        return G.eval(), (D.eval() if D is not None else None)


def model_config(detected: Detected, base: ModelConfig | None = None) -> ModelConfig:
    from lafite.config import ModelConfig

    return replace(
        base or ModelConfig(), z_dim=detected.z_dim, w_dim=detected.w_dim,
        mapping_layers=detected.mapping_layers, channel_base=detected.channel_base,
        channel_max=detected.channel_max, cond_form=detected.cond_form,  # type: ignore[arg-type]
        cond_dim=detected.cond_dim, cond_lr_mult=detected.cond_lr_mult, d_semantic="batch-sum",
        d_normalize_fs=detected.d_normalize_fs, d_semantic_head=detected.d_semantic_head,
        mbstd_group=detected.mbstd_group,
    )


def _networks(data: dict[str, Any], path: Path) -> tuple[PersistentRecord, PersistentRecord | None,
                                                         PersistentRecord | None]:
    G_ema = data.get("G_ema") if isinstance(data.get("G_ema"), PersistentRecord) else None
    G = data.get("G") if isinstance(data.get("G"), PersistentRecord) else None
    D = data.get("D") if isinstance(data.get("D"), PersistentRecord) else None
    if G_ema is None and G is None:
        raise SnapshotError(f"{path} holds no generator (neither G_ema nor G)")
    for record in (G_ema, G, D):
        if record is not None and record.version != PERSISTENCE_VERSION:
            warnings.warn(f"{path}: persistence version {record.version}, this reader knows "
                          f"{PERSISTENCE_VERSION}; the tensors are checked all the same",
                          stacklevel=3)
    return (G_ema or G), G, D  # type: ignore[return-value]


def scan_snapshot(path: Path) -> Detected:
    """The layout of an official snapshot from its tensors' shapes (no tensor data is read)."""
    data = read_snapshot(path, shapes_only=True)
    G_ema, G, D = _networks(data, path)
    try:
        return detect(G_ema, D, G is not None)
    except _Layout as exc:
        raise SnapshotError(_layout_message(path, exc)) from None


def _layout_message(path: Path, exc: _Layout) -> str:
    return (f"{path} holds another architecture than LAFITE's (the official "
            f"training/networks.py): {exc}. Nothing was imported")


def import_snapshot(path: Path) -> Imported:
    """Read an official snapshot into our networks' state dicts (nothing stored in it runs)."""
    import torch

    from lafite.model import Discriminator, Generator, count_parameters

    started = time.perf_counter()
    path = Path(path)
    data = read_snapshot(path)
    G_ema, G, D = _networks(data, path)
    try:
        detected = detect(G_ema, D, G is not None)
        model = model_config(detected)
        res = detected.resolution
        g_res = [2**i for i in range(2, int(math.log2(res)) + 1)]
        d_res = [2**i for i in range(int(math.log2(res)), 2, -1)]
        with torch.device("meta"):
            ours_G = Generator(model, res, detected.f_dim)
            ours_D = Discriminator(model, res, detected.f_dim)
        params_G, params_D = count_parameters(ours_G), count_parameters(ours_D)

        def rename_g(name: str) -> str | None:
            return generator_name(name, g_res, detected.structure)

        state_ema = _mapped(G_ema, ours_G, "G_ema", rename_g)
        state_G = _mapped(G, ours_G, "G", rename_g) if G is not None else state_ema
        state_D = (_mapped(D, ours_D, "D", lambda n: discriminator_name(n, d_res))
                   if D is not None else None)
    except _Layout as exc:
        raise SnapshotError(_layout_message(path, exc)) from None
    extras = {}
    kwargs = data.get("training_set_kwargs")
    if isinstance(kwargs, dict):
        extras["training_set_kwargs"] = {str(k): v for k, v in kwargs.items()
                                         if isinstance(v, str | int | float | bool | type(None))}
    return Imported(path, detected, model, state_G, state_ema, state_D, params_G, params_D,
                    time.perf_counter() - started, extras)


def checkpoint_state(imported: Imported, cfg: RunConfig) -> dict[str, Any]:
    """A lafite-repro checkpoint dict (see lafite/train.py) holding the imported networks:
    finished at step 0, so that ``load_generator``, ``read_pretrained`` (fine-tuning, zero-shot)
    and ``evaluate`` read it like one of ours."""
    from lafite.train import CHECKPOINT_FORMAT

    state: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "cond_dim": imported.detected.f_dim,
        "resolution": imported.detected.resolution,
        "step": 0, "cur_nimg": 0, "kimg": 0.0, "finished": True,
        "G": imported.G, "G_ema": imported.G_ema,
        "imported_from": str(imported.source),
        "imported": imported.detected.summary(),
    }
    if imported.D is not None:
        state["D"] = imported.D
    return state


def import_config(detected: Detected, overrides: dict[str, Any] | None = None,
                  where: str = "--set") -> RunConfig:
    """The configuration an imported model is evaluated with: the paper's defaults, the
    detected layout, then the user's ``--set`` (evaluation data, CLIP, metrics), which may not
    change the layout."""
    from lafite.config import RunConfig
    from lafite.errors import ConfigError

    layout = detected.model_overrides()
    cfg = RunConfig().override(layout, where="the snapshot's layout")
    if overrides:
        cfg = cfg.override(overrides, where=where)
    changed = [k for k, v in layout.items() if cfg.flat()[k] != v]
    if changed:
        raise ConfigError(
            f"{where}: {', '.join(changed)} is fixed by the imported snapshot's layout "
            f"({', '.join(f'{k}={layout[k]}' for k in changed)}); set only evaluation settings "
            "(data.*, clip.*, eval.*, mode)"
        )
    return cfg.checked(where)


# -- the workspace record -------------------------------------------------------------------


def imported_dir(workspace: Workspace) -> Path:
    return workspace.models_dir / IMPORTED_DIR


def default_name(path: Path) -> str:
    """A name for an import: the snapshot's folder and file stem (official run folders are
    numbered, the snapshots inside them by kimg)."""
    stem = Path(path).stem
    parent = Path(path).resolve().parent.name
    name = f"{parent}-{stem}" if stem.startswith("network-snapshot") and parent else stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "snapshot"
    return name[:100]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass(frozen=True)
class ImportRecord:
    """What ``import.json`` says about one import."""

    name: str
    checkpoint: Path
    source: str
    sha256: str
    run_id: str
    detected: dict[str, Any]
    params_G: int
    params_D: int
    seconds: float
    reused: bool = False


def read_record(folder: Path) -> ImportRecord | None:
    meta = folder / IMPORT_META
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
        return ImportRecord(name=data["name"], checkpoint=folder / "checkpoint.pt",
                            source=data["source"], sha256=data["sha256"],
                            run_id=data.get("run_id", ""), detected=data["detected"],
                            params_G=int(data.get("params_G", 0)),
                            params_D=int(data.get("params_D", 0)),
                            seconds=float(data.get("seconds", 0.0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_import(ref: str, workspace: Workspace) -> ImportRecord:
    """An import by name, or by the path of the snapshot it was made from; UserError if none."""
    root = imported_dir(workspace)
    if _NAME.match(ref):
        found = read_record(root / ref)
        if found is not None:
            return found
    candidate = Path(ref).expanduser()
    if candidate.is_file():
        digest = file_sha256(candidate)
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            record = read_record(folder)
            if record is not None and record.sha256 == digest:
                return record
        raise UserError(f"{candidate} has not been imported into {workspace.root}: run "
                        f"`lafite-repro import {candidate}` first")
    names = sorted(p.name for p in root.iterdir() if (p / IMPORT_META).is_file()) \
        if root.is_dir() else []
    raise UserError(
        f"no imported model named {ref!r} in {workspace.root} (imported: "
        f"{', '.join(names) or 'none'}). Import it with `lafite-repro import PKL --name {ref}`"
    )


def record_import(path: Path, workspace: Workspace, *, name: str | None = None,
                  overrides: dict[str, Any] | None = None, tracking_uri: str | None = None,
                  ) -> ImportRecord:
    """Import ``path`` into the workspace and record it in MLflow (once per name and file).

    Everything that can fail is checked before anything is written: the snapshot is read and
    mapped in memory first; the checkpoint is written atomically, then the MLflow run.
    """
    from lafite.checkpoint import file_fingerprint, save_atomic
    from lafite.tracking import Tracker

    path = Path(path).expanduser().resolve()
    name = name or default_name(path)
    if not _NAME.match(name):
        raise UserError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    if not path.is_file():
        raise SnapshotError(f"{path}: no such file (give the path of an official LAFITE "
                           "network-snapshot-*.pkl)")
    digest = file_sha256(path)
    folder = imported_dir(workspace) / name
    existing = read_record(folder)
    if existing is not None:
        if existing.sha256 != digest:
            raise UserError(
                f"--name {name!r} is already the import of {existing.source} (sha256 "
                f"{existing.sha256[:12]}), another file than {path} ({digest[:12]}): choose "
                "another --name"
            )
        if existing.checkpoint.is_file() and not overrides:
            return replace(existing, reused=True)
    imported = import_snapshot(path)
    cfg = import_config(imported.detected, overrides)
    tracker = Tracker(workspace, tracking_uri)
    tracker.check()
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = save_atomic(checkpoint_state(imported, cfg), folder / "checkpoint.pt")
    size, ck_sha = file_fingerprint(checkpoint)
    detected = imported.detected.summary()
    run_id = tracker.record_import(
        name, checkpoint=checkpoint.resolve(), checkpoint_size=size, checkpoint_sha256=ck_sha,
        source=str(path), source_sha256=digest, detected=detected, config=cfg.to_dict(),
        flat_params=cfg.flat(),
        extra={"params_G": imported.params_G, "params_D": imported.params_D,
               "import_seconds": round(imported.seconds, 3)},
    )
    record = ImportRecord(name=name, checkpoint=checkpoint, source=str(path), sha256=digest,
                          run_id=run_id, detected=detected, params_G=imported.params_G,
                          params_D=imported.params_D, seconds=imported.seconds)
    from lafite.atomic import atomic_write

    payload = {"name": name, "source": str(path), "sha256": digest, "run_id": run_id,
               "detected": detected, "params_G": imported.params_G,
               "params_D": imported.params_D, "seconds": imported.seconds,
               "extras": imported.extras}
    atomic_write(folder / IMPORT_META,
                 lambda handle: handle.write(json.dumps(payload, indent=2, default=str).encode()))
    return record


# -- spec rows ---------------------------------------------------------------------------------


def resolve_reference(ref: str, workspace: Workspace | None = None) -> tuple[Path, Detected, str]:
    """A spec row's ``import:`` value: (checkpoint to start from, layout, sha256 of the source).

    A name (or the path of an imported snapshot) is looked up among the workspace's imports and
    gives their lafite-repro checkpoint; the path of a snapshot not imported yet is used as it
    is (``train.init_checkpoint`` reads official snapshots through this module), its layout
    read from its tensors' shapes.
    """
    from lafite.workspace import Workspace

    workspace = workspace or Workspace.resolve()
    try:
        record = find_import(ref, workspace)
    except UserError:
        candidate = Path(ref).expanduser()
        if not candidate.is_file():
            raise
        return candidate.resolve(), scan_snapshot(candidate), file_sha256(candidate)
    return record.checkpoint.resolve(), _detected_from(record.detected), record.sha256


def _detected_from(data: dict[str, Any]) -> Detected:
    values = dict(data)
    values["channels"] = {int(k): int(v) for k, v in values.get("channels", {}).items()}
    return Detected(**values)


def checkpoint_from_snapshot(path: Path) -> dict[str, Any]:
    """An official snapshot as a lafite-repro checkpoint dict (for ``load_checkpoint``)."""
    imported = import_snapshot(path)
    return checkpoint_state(imported, import_config(imported.detected))


__all__ = [
    "Detected",
    "SnapshotError",
    "ImportRecord",
    "Imported",
    "PersistentRecord",
    "checkpoint_from_snapshot",
    "checkpoint_state",
    "default_name",
    "detect",
    "discriminator_name",
    "find_import",
    "generator_name",
    "import_config",
    "import_snapshot",
    "is_official_snapshot",
    "read_snapshot",
    "record_import",
    "resolve_reference",
    "scan_snapshot",
]
