"""Find ttskit's shipped weights, verify them, and convert them once to safetensors in a cache folder.

ttskit is installed (``pip install --no-deps ttskit==0.3.8``) only as a carrier of weight files: it is never
imported. Its .pt files are whole pickled modules; a restricted unpickler maps every class to an inert
placeholder and keeps only the tensors, and only after the file's sha256 matches.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from app.errors import EngineUnavailableError

TTSKIT_VERSION = "0.3.8"
ACOUSTIC_FILE = "mellotron.kuangdd-mspk.pt"
ACOUSTIC_HPARAMS_FILE = "mellotron.kuangdd-mspk.hparams.json"
VOCODER_FILE = "melgan.kuangdd.pt"
SHA256 = {
    ACOUSTIC_FILE: "6f73e55758506da22bbe6b76ca86ea5ff559f859bca0392e51aaeb0973a7838a",
    VOCODER_FILE: "4a8cf7774077b82cb48ac0a414f0993a5b904f8c5a2e1a92ae901d506b854da0",
}
ACOUSTIC_SAFETENSORS = "acoustic.safetensors"
VOCODER_SAFETENSORS = "vocoder.safetensors"
HPARAMS_JSON = "acoustic.hparams.json"
INSTALL_HINT = f"pip install --no-deps ttskit=={TTSKIT_VERSION}"


@dataclass(frozen=True)
class EmbeddedWeights:
    """Converted tensors of both models plus the acoustic model's hyper-parameters."""

    acoustic: dict[str, torch.Tensor]  # Tacotron2-style state dict (ttskit's parameter names)
    vocoder: dict[str, torch.Tensor]  # MelGAN generator state dict with weight norm folded
    hparams: dict  # ttskit's mellotron hparams JSON


def default_cache_dir() -> Path:
    """Where converted weights live: $TTS_CACHE_DIR, else ~/.cache/zh-tts-demo/embedded."""
    root = os.environ.get("TTS_CACHE_DIR") or Path.home() / ".cache" / "zh-tts-demo"
    return Path(root) / "embedded"


def ttskit_model_dir() -> Path:
    """Locate ttskit's resource/model folder without importing ttskit."""
    spec = importlib.util.find_spec("ttskit")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailableError(
            f"the embedded voice's weights come from the PyPI package ttskit, which is not installed: run `{INSTALL_HINT}`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "resource" / "model"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Inert:
    """Stands in for any pickled class: keeps the object's state dict and nothing else."""

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__["_state"] = {}

    def __setstate__(self, state) -> None:
        self.__dict__["_state"] = state if isinstance(state, dict) else {"_raw": state}


_ALLOWED = {
    ("collections", "OrderedDict"),
    ("__builtin__", "set"),
    ("builtins", "set"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds tensors and containers; every other class becomes an inert placeholder, nothing runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        return type(name, (_Inert,), {"__module__": "inert." + module})


class _RestrictedPickleModule:
    Unpickler = _RestrictedUnpickler
    load = pickle.load
    __name__ = "restricted_pickle"


def _collect_tensors(obj, prefix: str, out: dict[str, torch.Tensor]) -> None:
    """Walk pickled nn.Module placeholders and gather their parameters and buffers by dotted name."""
    state = obj._state
    for group in ("_parameters", "_buffers"):
        for key, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor):
                out[prefix + key] = value.detach().clone()
    for key, child in (state.get("_modules") or {}).items():
        if isinstance(child, _Inert):
            _collect_tensors(child, f"{prefix}{key}.", out)


def read_pickled_module(path: Path) -> dict[str, torch.Tensor]:
    """Verify a ttskit .pt file's sha256, then read its tensors with the restricted unpickler."""
    expected = SHA256[path.name]
    actual = sha256_of(path)
    if actual != expected:
        raise EngineUnavailableError(f"{path} has sha256 {actual}, expected {expected}: reinstall with `{INSTALL_HINT}`")
    # weights_only=False is needed for these whole-module pickles; it is safe here because the hash matched
    # and the unpickler above instantiates no class.
    root = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    if not isinstance(root, _Inert):
        raise EngineUnavailableError(f"{path} does not hold a pickled module")
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", tensors)
    return tensors


def fold_weight_norm(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each weight_g/weight_v pair by weight = g * v / ||v|| (norm over all but dim 0)."""
    out = {k: v for k, v in tensors.items() if not k.endswith(("weight_g", "weight_v"))}
    for key in tensors:
        if key.endswith("weight_g"):
            base = key[: -len("weight_g")]
            g, v = tensors[key], tensors[base + "weight_v"]
            norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
            out[base + "weight"] = (g * v / norm).contiguous()
    return out


def _save(tensors: dict[str, torch.Tensor], path: Path, source_sha256: str) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"source_sha256": source_sha256})
    tmp.replace(path)  # atomic, so a crash mid-write never leaves a half file that looks converted


def _load(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        return {k: f.get_tensor(k) for k in f.keys()}, meta.get("source_sha256", "")


def _cached(cache_dir: Path) -> EmbeddedWeights | None:
    files = [cache_dir / n for n in (ACOUSTIC_SAFETENSORS, VOCODER_SAFETENSORS, HPARAMS_JSON)]
    if not all(f.exists() for f in files):
        return None
    acoustic, a_src = _load(files[0])
    vocoder, v_src = _load(files[1])
    if (a_src, v_src) != (SHA256[ACOUSTIC_FILE], SHA256[VOCODER_FILE]):
        return None  # converted from other files: convert again
    return EmbeddedWeights(acoustic, vocoder, json.loads(files[2].read_text(encoding="utf8")))


def load_weights(cache_dir: Path | None = None) -> EmbeddedWeights:
    """Return converted weights, converting ttskit's files into cache_dir on first use."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cached = _cached(cache_dir)
    if cached is not None:
        return cached
    src = ttskit_model_dir()
    for name in (ACOUSTIC_FILE, VOCODER_FILE, ACOUSTIC_HPARAMS_FILE):
        if not (src / name).exists():
            raise EngineUnavailableError(f"{src / name} is missing: reinstall with `{INSTALL_HINT}`")
    acoustic = read_pickled_module(src / ACOUSTIC_FILE)
    vocoder = fold_weight_norm(read_pickled_module(src / VOCODER_FILE))
    hparams = json.loads((src / ACOUSTIC_HPARAMS_FILE).read_text(encoding="utf8"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    _save(acoustic, cache_dir / ACOUSTIC_SAFETENSORS, SHA256[ACOUSTIC_FILE])
    _save(vocoder, cache_dir / VOCODER_SAFETENSORS, SHA256[VOCODER_FILE])
    (cache_dir / HPARAMS_JSON).write_text(json.dumps(hparams, indent=1), encoding="utf8")
    return EmbeddedWeights(acoustic, vocoder, hparams)
