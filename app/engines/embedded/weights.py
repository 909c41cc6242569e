"""Find ttskit's shipped weights, verify them, and convert them once to safetensors in a cache folder.

ttskit is installed (``pip install --no-deps ttskit==0.3.8``) only as a carrier of weight files: it is never
imported. Its .pt files are whole pickled modules; app.engines.checkpoints reads only their tensors (every class
becomes an inert placeholder), and only after the file's sha256 matches.
"""
from __future__ import annotations

import importlib.util
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from app.engines.checkpoints import fold_weight_norm, read_module_tensors, sha256_of
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


def read_pickled_module(path: Path) -> dict[str, torch.Tensor]:
    """Verify a ttskit .pt file's sha256, then read its tensors with the restricted unpickler (no class is built)."""
    expected = SHA256[path.name]
    actual = sha256_of(path)
    if actual != expected:
        raise EngineUnavailableError(f"{path} has sha256 {actual}, expected {expected}: reinstall with `{INSTALL_HINT}`")
    try:
        return read_module_tensors(str(path))
    except pickle.UnpicklingError as err:
        raise EngineUnavailableError(f"{path}: {err}") from None


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
