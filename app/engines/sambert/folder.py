"""Reads a ModelScope Sambert-HifiGan model folder (current or older layout) into configs, tables and weights."""
from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml

from app.errors import EngineUnavailableError
from app.engines.sambert.config import HOP_SAMPLES, SAMPLE_RATE_HZ, AcousticConfig, VocoderConfig
from app.engines.sambert.symbols import (
    DEFAULT_PHONES, DEFAULT_TONES, EMOTION_TYPES, EOS, MASK, PAD, SYLLABLE_FLAGS, WORD_SEGMENTS, SymbolTables,
    with_specials,
)
from app.engines.sambert.vocoder import convert_generator_state

LFEAT_TYPES = "sy,tone,syllable_flag,word_segment,emo_category,speaker_category"  # the only supported feature list
DICT_FILES = {  # older folders ship their own tables under dict/ (newer ones sometimes do too)
    "phones": "sy_dict.txt", "tones": "tone_dict.txt", "syllable_flags": "syllable_flag_dict.txt",
    "word_segments": "word_segment_dict.txt", "emotions": "emo_category_dict.txt", "speakers": "speaker_dict.txt",
}
EMBEDDINGS = {  # table -> acoustic-checkpoint tensor whose row count is that table's size
    "phones": "text_encoder.sy_emb.weight", "tones": "text_encoder.tone_emb.weight",
    "syllable_flags": "text_encoder.syllable_flag_emb.weight", "word_segments": "text_encoder.ws_emb.weight",
    "emotions": "emo_tokenizer.weight", "speakers": "spk_tokenizer.weight",
}


class ModelFolderError(EngineUnavailableError):
    """A model folder is missing a file or holds one that cannot be used; the message names it."""


@dataclass(frozen=True)
class VoiceFiles:
    """Everything one voice needs, read and checked, not yet on a device."""

    name: str  # voice name from voices.json
    acoustic: AcousticConfig  # acoustic-model sizes (embedding rows from the checkpoint)
    vocoder: VocoderConfig  # generator sizes
    acoustic_state: dict[str, torch.Tensor]  # KAN-TTS-named acoustic weights
    vocoder_state: dict[str, torch.Tensor]  # generator weights, our names, weight norm folded
    tables: SymbolTables  # id tables the checkpoint was trained with
    speakers: tuple[str, ...]  # speaker symbols this voice was trained on (speaker_list)
    emotions: tuple[str, ...]  # emotion symbols this voice offers (emotion_neutral first)
    sample_rate_hz: int  # output sample rate


@dataclass(frozen=True)
class ModelFolder:
    """A loaded folder: its voices in voices.json order."""

    path: Path  # folder given by the user
    layout: str  # "current" (am/ckpt/checkpoint_N.pth) or "legacy" (voices.zip, pytorch_model.bin)
    voices: dict[str, VoiceFiles]  # voice name -> files


class _Source:
    """Read-only view of the folder's `voices/` tree, either on disk or inside voices.zip."""

    def __init__(self, root: Path):
        self.root = root
        self.zip: zipfile.ZipFile | None = None
        if not (root / "voices" / "voices.json").is_file() and (root / "voices.zip").is_file():
            try:
                self.zip = zipfile.ZipFile(root / "voices.zip")
            except zipfile.BadZipFile as err:
                raise ModelFolderError(f"{root / 'voices.zip'} is not a valid zip file: {err}") from None

    def exists(self, rel: str) -> bool:
        if self.zip is not None:
            names = self.zip.namelist()
            return rel in names or any(n.startswith(rel.rstrip("/") + "/") for n in names)
        return (self.root / rel).exists()

    def read(self, rel: str) -> bytes:
        if not self.exists(rel):
            where = f"{self.root / 'voices.zip'}:{rel}" if self.zip is not None else str(self.root / rel)
            raise ModelFolderError(f"missing file {where}")
        return self.zip.read(rel) if self.zip is not None else (self.root / rel).read_bytes()

    def listdir(self, rel: str) -> list[str]:
        if self.zip is not None:
            prefix = rel.rstrip("/") + "/"
            return sorted({n[len(prefix):].split("/")[0] for n in self.zip.namelist() if n.startswith(prefix) and n != prefix})
        path = self.root / rel
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def describe(self, rel: str) -> str:
        return f"{self.root / 'voices.zip'}:{rel}" if self.zip is not None else str(self.root / rel)


def _parse(source: _Source, rel: str, kind: str) -> Any:
    try:
        text = source.read(rel).decode("utf-8")
        return json.loads(text) if kind == "json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise ModelFolderError(f"{source.describe(rel)} is not valid {kind}: {err}") from None


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for very old checkpoints stored as plain pickles of numpy arrays; refuses anything else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a legacy checkpoint")
        return super().find_class(module, name)


def _load_checkpoint(source: _Source, rel: str) -> Any:
    data = source.read(rel)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - fall back to the legacy numpy pickle, then report the first error
        try:
            obj = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
        except Exception:  # noqa: BLE001
            raise ModelFolderError(f"cannot read checkpoint {source.describe(rel)}: {first}") from None
        return {k: {n: torch.as_tensor(np.asarray(v)) for n, v in d.items()} if isinstance(d, dict) else d
                for k, d in obj.items()}


def _latest_checkpoint(source: _Source, ckpt_dir: str) -> str:
    steps = {}
    for name in source.listdir(ckpt_dir):
        match = re.fullmatch(r"checkpoint_(\d+)\.pth", name)
        if match:
            steps[int(match.group(1))] = name
    if not steps:
        raise ModelFolderError(f"no checkpoint_<step>.pth in {source.describe(ckpt_dir)}")
    return f"{ckpt_dir}/{steps[max(steps)]}"


def _pick(obj: Any, keys: tuple[str, ...], where: str) -> dict[str, torch.Tensor]:
    for key in keys:
        if not isinstance(obj, Mapping) or key not in obj:
            raise ModelFolderError(f"{where} has no {'/'.join(keys)} weights (missing key {key!r})")
        obj = obj[key]
    return dict(obj)


def _read_table(source: _Source, voice_dir: str, rel: str | None) -> tuple[str, ...] | None:
    if not rel or not source.exists(f"{voice_dir}/{rel}"):
        return None
    lines = source.read(f"{voice_dir}/{rel}").decode("utf-8").splitlines()
    return tuple(line.strip("\r\n") for line in lines if line.strip())


def _tables(source: _Source, voice_dir: str, unit: Mapping[str, Any], state: Mapping[str, torch.Tensor],
            speaker_list: tuple[str, ...]) -> SymbolTables:
    """Folder dictionaries win over the built-in KAN-TTS tables; sizes are checked against the checkpoint."""
    defaults = {"phones": DEFAULT_PHONES, "tones": DEFAULT_TONES, "syllable_flags": SYLLABLE_FLAGS,
                "word_segments": WORD_SEGMENTS, "emotions": EMOTION_TYPES, "speakers": speaker_list}
    legacy_keys = {"phones": "sy", "tones": "tone", "syllable_flags": "syllable_flag", "word_segments": "word_segment",
                   "emotions": "emo_category", "speakers": "speaker_category"}
    built = {}
    for field, default in defaults.items():
        named = unit.get(legacy_keys[field])
        names = _read_table(source, voice_dir, named if isinstance(named, str) else None)
        names = names or _read_table(source, voice_dir, f"dict/{DICT_FILES[field]}") or default
        names = tuple(n[1:] if field == "phones" and n.startswith("@") else n for n in names)
        rows = int(state[EMBEDDINGS[field]].shape[0])
        if rows == len(names) + 3:
            built[field] = with_specials(names, has_mask=True)
        elif rows == len(names) + 2:
            built[field] = with_specials(names, has_mask=False)
        else:
            raise ModelFolderError(
                f"{source.describe(voice_dir)}: {EMBEDDINGS[field]} has {rows} rows but the {field} table has "
                f"{len(names)} entries (+2 or +3 specials expected); wrong dictionary or checkpoint?")
    return SymbolTables(**built)


def _voice(source: _Source, name: str, root_config: Mapping[str, Any]) -> VoiceFiles:
    vdir = f"voices/{name}"
    if not source.exists(vdir):
        raise ModelFolderError(f"voices.json lists {name!r} but {source.describe(vdir)} does not exist")
    model_cfg = root_config.get("model", {}) if isinstance(root_config.get("model"), Mapping) else {}
    if source.exists(f"{vdir}/am/ckpt"):  # current layout
        am_yaml = _parse(source, f"{vdir}/am/config.yaml", "yaml")
        voc_yaml = _parse(source, f"{vdir}/voc/config.yaml", "yaml")
        try:
            params, unit = am_yaml["Model"]["KanTtsSAMBERT"]["params"], am_yaml["linguistic_unit"]
            voc_params = voc_yaml["Model"]["Generator"]["params"]
        except (KeyError, TypeError) as err:
            raise ModelFolderError(f"{source.describe(vdir)}: am/voc config.yaml lacks {err}") from None
        am_path = _latest_checkpoint(source, f"{vdir}/am/ckpt")
        voc_path = _latest_checkpoint(source, f"{vdir}/voc/ckpt")
        am_state = _pick(_load_checkpoint(source, am_path), ("model",), source.describe(am_path))
        voc_state = _pick(_load_checkpoint(source, voc_path), ("model", "generator"), source.describe(voc_path))
    else:  # older layout: configs in configuration.json, weights in pytorch_model.bin
        am_section, voc_params = model_cfg.get("am"), model_cfg.get("vocoder")
        if not isinstance(am_section, Mapping) or not isinstance(voc_params, Mapping):
            raise ModelFolderError(
                f"{source.describe(vdir)} has no am/ckpt, and configuration.json has no model.am / model.vocoder "
                "sections for the older layout")
        params = am_section.get("am", am_section)
        unit = am_section.get("linguistic_unit", {})
        am_path, voc_path = f"{vdir}/am/pytorch_model.bin", f"{vdir}/vocoder/pytorch_model.bin"
        am_state = _pick(_load_checkpoint(source, am_path), ("fsnet",), source.describe(am_path))
        voc_state = _pick(_load_checkpoint(source, voc_path), ("generator",), source.describe(voc_path))
    if not isinstance(unit, Mapping):
        raise ModelFolderError(f"{source.describe(vdir)}: linguistic_unit must be a mapping")
    language = unit.get("language", "PinYin")
    if language != "PinYin":
        raise ModelFolderError(f"voice {name!r} uses language {language!r}; the native frontend speaks PinYin only")
    lfeat = str(unit.get("lfeat_type_list", LFEAT_TYPES)).replace(" ", "")
    if lfeat != LFEAT_TYPES:
        raise ModelFolderError(f"voice {name!r}: lfeat_type_list={lfeat!r} is not supported (need {LFEAT_TYPES})")
    missing = [k for k in EMBEDDINGS.values() if k not in am_state]
    if missing:
        raise ModelFolderError(f"{source.describe(am_path)} lacks {missing}: not a Sambert acoustic checkpoint")
    speaker_list = tuple(s.strip() for s in str(unit.get("speaker_list", "F7")).split(",") if s.strip())
    tables = _tables(source, vdir, unit, am_state, speaker_list)
    sizes = {"sy": "phones", "tone": "tones", "syllable_flag": "syllable_flags", "word_segment": "word_segments",
             "emotion": "emotions", "speaker": "speakers"}
    try:
        acoustic = AcousticConfig.from_params(params, {k: len(getattr(tables, v)) for k, v in sizes.items()})
        vocoder = VocoderConfig.from_params(voc_params)
        vocoder_state = convert_generator_state(voc_state)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFolderError(f"voice {name!r} in {source.root}: {err}") from None
    sample_rate = _sample_rate(source, vdir, vocoder)
    return VoiceFiles(
        name=name, acoustic=acoustic, vocoder=vocoder, acoustic_state=am_state, vocoder_state=vocoder_state,
        tables=tables, speakers=tuple(s for s in tables.speakers if s not in (PAD, EOS, MASK)),
        emotions=_emotions(unit, tables), sample_rate_hz=sample_rate,
    )


def _emotions(unit: Mapping[str, Any], tables: SymbolTables) -> tuple[str, ...]:
    """The folder's own emotion list (`emotion_list`, or a dict/ table) else neutral only."""
    listed = unit.get("emotion_list")
    if isinstance(listed, str):
        names = [e.strip() for e in listed.split(",") if e.strip()]
    elif tables.emotions[: len(EMOTION_TYPES)] != EMOTION_TYPES:  # a folder table, not the global list
        names = [e for e in tables.emotions if e.startswith("emotion_")]
    else:
        names = ["emotion_neutral"]
    names = [n if n.startswith("emotion_") else f"emotion_{n}" for n in names]
    names = [n for n in names if n in tables.emotions and n != "emotion_none" and "placeholder" not in n]
    ordered = (["emotion_neutral"] if "emotion_neutral" in names else []) + [n for n in names if n != "emotion_neutral"]
    return tuple(ordered) or ("emotion_neutral",)


def _sample_rate(source: _Source, vdir: str, vocoder: VocoderConfig) -> int:
    rel = f"{vdir}/audio_config.yaml"
    audio = _parse(source, rel, "yaml") if source.exists(rel) else {}
    audio = audio.get("audio_config", audio) if isinstance(audio, Mapping) else {}
    rate = int(audio.get("sampling_rate", SAMPLE_RATE_HZ))
    hop = int(audio.get("hop_length", HOP_SAMPLES))
    if hop != vocoder.hop_samples:
        raise ModelFolderError(f"{source.describe(rel)}: hop_length={hop} but the vocoder upsamples by {vocoder.hop_samples}")
    return rate


def _voice_names(source: _Source) -> tuple[str, ...]:
    if source.zip is None and not (source.root / "voices" / "voices.json").is_file():
        raise ModelFolderError(f"{source.root} has neither voices/voices.json nor voices.zip: not a Sambert-HifiGan folder")
    listing = _parse(source, "voices/voices.json", "json")
    names = listing.get("voices") if isinstance(listing, Mapping) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelFolderError(f"{source.describe('voices/voices.json')} must hold a non-empty list under 'voices'")
    return tuple(names)


def read_voice_names(path: str | Path, missing_ok: bool = False) -> tuple[str, ...]:
    """The voices voices.json lists (on disk or in voices.zip), in order; () for an unreadable folder if missing_ok."""
    try:
        return _voice_names(_Source(Path(path).expanduser()))
    except ModelFolderError:
        if missing_ok:
            return ()
        raise


def load_model_folder(path: str | Path) -> ModelFolder:
    """Read every voice of a folder; raises ModelFolderError naming the missing or malformed file."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ModelFolderError(f"model folder {str(root)!r} does not exist or is not a directory")
    config_path = root / "configuration.json"
    root_config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            root_config = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelFolderError(f"{config_path} is not valid JSON: {err}") from None
    source = _Source(root)
    names = _voice_names(source)
    voices = {name: _voice(source, name, root_config) for name in names}
    layout = "current" if all(source.exists(f"voices/{n}/am/ckpt") for n in names) else "legacy"
    return ModelFolder(path=root, layout=layout, voices=voices)
