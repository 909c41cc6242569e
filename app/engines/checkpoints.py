"""Reading checkpoints this project did not write: one restricted unpickler, one weight-norm folder, one file hash.

Both engines read pickles from elsewhere: ttskit's whole-module `.pt` files (embedded engine) and Sambert folders'
checkpoints (sambert engines), some of them plain pickles of numpy arrays. Nothing here ever runs code a pickle
names: `RestrictedUnpickler` builds only the classes on its allowlist and, depending on how it is configured, maps
every other class to an inert placeholder (to walk a pickled module's tensors) or refuses the file.
"""
from __future__ import annotations

import hashlib
import io
import pickle
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

# Tensors and the containers torch.save writes around them.
TORCH_TENSORS = frozenset({
    ("collections", "OrderedDict"), ("__builtin__", "set"), ("builtins", "set"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
})
# numpy arrays as old KAN-TTS releases pickled them (numpy 1 and numpy 2 module paths).
NUMPY_ARRAYS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
})
INERT, REFUSE = "inert", "refuse"  # what RestrictedUnpickler does with a class outside its allowlist


class Inert:
    """Stands in for any pickled class: keeps the object's pickled state and nothing else; runs no code."""

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__["_state"] = {}

    def __setstate__(self, state) -> None:
        self.__dict__["_state"] = state if isinstance(state, dict) else {"_raw": state}


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only allowlisted classes; any other becomes an `Inert` placeholder or is refused, as configured.

    Configure it with `RestrictedUnpickler.configured(allowed, others)`, which returns a subclass (torch.load
    subclasses the unpickler it is given, so the configuration has to live on a class, not an instance).
    """

    allowed: ClassVar[frozenset[tuple[str, str]]] = frozenset()  # (module, name) pairs built for real
    others: ClassVar[str] = REFUSE  # INERT: placeholder for any other class; REFUSE: UnpicklingError naming it

    @classmethod
    def configured(cls, allowed: frozenset[tuple[str, str]], others: str) -> type["RestrictedUnpickler"]:
        if others not in (INERT, REFUSE):
            raise ValueError(f"others={others!r} must be {INERT!r} or {REFUSE!r}")
        return type(f"RestrictedUnpickler_{others}", (cls,), {"allowed": frozenset(allowed), "others": others})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        if self.others == INERT:
            return type(name, (Inert,), {"__module__": "inert." + module})
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain tensors and arrays are read")


ModuleTensorsUnpickler = RestrictedUnpickler.configured(TORCH_TENSORS, INERT)  # ttskit's whole-module .pt files
NumpyArraysUnpickler = RestrictedUnpickler.configured(NUMPY_ARRAYS, REFUSE)  # legacy Sambert numpy pickles


class _PickleModule:
    """What torch.load's `pickle_module` needs: an Unpickler class and load()."""

    def __init__(self, unpickler: type[pickle.Unpickler]) -> None:
        self.Unpickler = unpickler
        self.load = pickle.load
        self.__name__ = f"restricted_pickle.{unpickler.__name__}"


def read_module_tensors(source: str | io.BytesIO) -> dict[str, torch.Tensor]:
    """Parameters and buffers, by dotted name, of a torch.save'd whole nn.Module, instantiating no class."""
    # weights_only=False is needed for whole-module pickles; the unpickler above makes it safe (no class is built).
    root = torch.load(source, map_location="cpu", weights_only=False, pickle_module=_PickleModule(ModuleTensorsUnpickler))
    if not isinstance(root, Inert):
        raise pickle.UnpicklingError(f"{source} does not hold a pickled module")
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", tensors)
    return tensors


def _collect_tensors(obj: Inert, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Walk pickled nn.Module placeholders and gather their parameters and buffers by dotted name."""
    state = obj._state
    for group in ("_parameters", "_buffers"):
        for key, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value.detach().clone()
    for key, child in (state.get("_modules") or {}).items():
        if isinstance(child, Inert):
            _collect_tensors(child, f"{prefix}{key}.", out)


def read_state_pickle(data: bytes) -> Any:
    """A checkpoint of plain state dicts: torch's own weights_only loader, else a legacy pickle of numpy arrays.

    Raises the torch loader's error when neither reads the data (that error says most about a modern file).
    """
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - try the legacy format, then report the first error
        try:
            obj = NumpyArraysUnpickler(io.BytesIO(data)).load()
        except Exception:  # noqa: BLE001
            raise first from None
    if not isinstance(obj, Mapping):
        raise pickle.UnpicklingError(f"a legacy checkpoint must hold a mapping, not {type(obj).__name__}")
    return {k: {n: torch.as_tensor(np.asarray(v)) for n, v in d.items()} if isinstance(d, Mapping) else d
            for k, d in obj.items()}


# weight_norm's two spellings: the old hook (weight_g, weight_v) and torch.nn.utils.parametrizations.weight_norm.
WEIGHT_NORM_PAIRS = (("weight_g", "weight_v"), ("parametrizations.weight.original0", "parametrizations.weight.original1"))


def fold_weight_norm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every weight-norm pair by the plain `weight` = g * v / ||v|| it stands for (norm over all but dim 0)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for g_name, v_name in WEIGHT_NORM_PAIRS:
            if key == g_name or key.endswith("." + g_name):
                base = key[: -len(g_name)]
                v = state[base + v_name].float()
                norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
                out[base + "weight"] = (value.float() * v / norm).contiguous()
                break
            if key == v_name or key.endswith("." + v_name):
                break
        else:
            out[key] = value
    return out


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
