"""Reads a ModelScope Sambert-HifiGan model folder (current or older layout): the one reader of both Sambert engines.

`read_catalog` is the light read (voices.json and each voice's YAML: voices, speakers, emotions; no checkpoint);
`load_model_folder` adds the checkpoints. Which emotions a voice offers follows app.engines.sambert.emotions.
"""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml

from app.engines.checkpoints import read_state_pickle
from app.engines.sambert.emotions import offered_emotions, table_categories
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
LEGACY_KEYS = {  # table -> linguistic_unit key that may name the folder's file for it (older layout)
    "phones": "sy", "tones": "tone", "syllable_flags": "syllable_flag", "word_segments": "word_segment",
    "emotions": "emo_category", "speakers": "speaker_category",
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
    emotions: tuple[str, ...]  # emotions this voice offers, bare names, neutral first (see emotions.py)
    sample_rate_hz: int  # output sample rate


@dataclass(frozen=True)
class ModelFolder:
    """A loaded folder: its voices in voices.json order."""

    path: Path  # folder given by the user
    layout: str  # "current" (am/ckpt/checkpoint_N.pth) or "legacy" (voices.zip, pytorch_model.bin)
    voices: dict[str, VoiceFiles]  # voice name -> files
    notes: tuple[str, ...]  # remarks for the user (skipped voices, voices that offer neutral only and why)


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


def _load_checkpoint(source: _Source, rel: str) -> Any:
    try:
        return read_state_pickle(source.read(rel))
    except ModelFolderError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is reported by name
        raise ModelFolderError(f"cannot read checkpoint {source.describe(rel)}: {err}") from None


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


def _table_names(source: _Source, voice_dir: str, unit: Mapping[str, Any], field: str) -> tuple[str, ...] | None:
    """A table the folder ships for field (named in linguistic_unit, or under dict/), else None."""
    named = unit.get(LEGACY_KEYS[field])
    names = _read_table(source, voice_dir, named if isinstance(named, str) else None)
    return names or _read_table(source, voice_dir, f"dict/{DICT_FILES[field]}")


def _tables(source: _Source, voice_dir: str, unit: Mapping[str, Any], state: Mapping[str, torch.Tensor],
            speaker_list: tuple[str, ...]) -> SymbolTables:
    """Folder dictionaries win over the built-in KAN-TTS tables; sizes are checked against the checkpoint."""
    defaults = {"phones": DEFAULT_PHONES, "tones": DEFAULT_TONES, "syllable_flags": SYLLABLE_FLAGS,
                "word_segments": WORD_SEGMENTS, "emotions": EMOTION_TYPES, "speakers": speaker_list}
    built = {}
    for field, default in defaults.items():
        names = _table_names(source, voice_dir, unit, field) or default
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


@dataclass(frozen=True)
class _VoiceConfig:
    """One voice's YAML/JSON configuration and where its checkpoints are; no checkpoint read yet."""

    am_params: Mapping[str, Any]  # KanTtsSAMBERT params
    unit: Mapping[str, Any]  # linguistic_unit
    voc_params: Mapping[str, Any]  # generator params (either layout's names)
    am_ckpt: tuple[str, tuple[str, ...]]  # (file, keys down to the state dict)
    voc_ckpt: tuple[str, tuple[str, ...]]  # (file or ckpt folder, keys down to the generator state dict)
    layout: str  # "current" or "legacy"


def _voice_config(source: _Source, name: str, root_config: Mapping[str, Any]) -> _VoiceConfig:
    vdir = f"voices/{name}"
    model_cfg = root_config.get("model", {}) if isinstance(root_config.get("model"), Mapping) else {}
    if source.exists(f"{vdir}/am/ckpt") or source.exists(f"{vdir}/am/config.yaml"):  # current layout (ModelScope's Voice)
        am_yaml = _parse(source, f"{vdir}/am/config.yaml", "yaml")
        voc_yaml = _parse(source, f"{vdir}/voc/config.yaml", "yaml")
        try:
            params, unit = am_yaml["Model"]["KanTtsSAMBERT"]["params"], am_yaml["linguistic_unit"]
            voc_params = voc_yaml["Model"]["Generator"]["params"]
        except (KeyError, TypeError) as err:
            raise ModelFolderError(f"{source.describe(vdir)}: am/voc config.yaml lacks {err}") from None
        config = _VoiceConfig(params, unit, voc_params, (f"{vdir}/am/ckpt", ("model",)),
                              (f"{vdir}/voc/ckpt", ("model", "generator")), "current")
    else:  # older layout: configs in configuration.json, weights in pytorch_model.bin
        am_section, voc_params = model_cfg.get("am"), model_cfg.get("vocoder")
        if not isinstance(am_section, Mapping) or not isinstance(voc_params, Mapping):
            raise ModelFolderError(
                f"{source.describe(vdir)} has no am/ckpt, and configuration.json has no model.am / model.vocoder "
                "sections for the older layout")
        config = _VoiceConfig(am_section.get("am", am_section), am_section.get("linguistic_unit", {}), voc_params,
                              (f"{vdir}/am/pytorch_model.bin", ("fsnet",)),
                              (f"{vdir}/vocoder/pytorch_model.bin", ("generator",)), "legacy")
    unit = config.unit
    if not isinstance(unit, Mapping):
        raise ModelFolderError(f"{source.describe(vdir)}: linguistic_unit must be a mapping")
    language = unit.get("language", "PinYin")
    if language != "PinYin":
        raise ModelFolderError(f"voice {name!r} uses language {language!r}; the native frontend speaks PinYin only")
    lfeat = str(unit.get("lfeat_type_list", LFEAT_TYPES)).replace(" ", "")
    if lfeat != LFEAT_TYPES:
        raise ModelFolderError(f"voice {name!r}: lfeat_type_list={lfeat!r} is not supported (need {LFEAT_TYPES})")
    return config


def _speaker_list(unit: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(s.strip() for s in str(unit.get("speaker_list", "F7")).split(",") if s.strip())


@dataclass(frozen=True)
class CatalogVoice:
    """What one voice offers, read without its checkpoints."""

    name: str  # voice name from voices.json
    speakers: tuple[str, ...]  # speaker symbols it was trained on (speaker_list or the folder's speaker table)
    emotions: tuple[str, ...]  # emotions it offers, bare names, neutral first (emotions.py's rule)
    emotion_table: tuple[str, ...]  # every category its emotion table can encode, bare names


@dataclass(frozen=True)
class Catalog:
    """A folder's voices in voices.json order, and remarks for the user."""

    path: Path  # the folder
    voices: dict[str, CatalogVoice]  # voice name -> what it offers
    notes: tuple[str, ...]  # voices skipped, voices that offer neutral only and how to tell them more


def _catalog_voice(source: _Source, name: str, config: _VoiceConfig,
                   emotions: Mapping[str, tuple[str, ...]]) -> tuple[CatalogVoice, str | None]:
    vdir = f"voices/{name}"
    own_emotions = _table_names(source, vdir, config.unit, "emotions")
    own_emotions = own_emotions if own_emotions and tuple(own_emotions) != EMOTION_TYPES else None  # not the global list
    table = table_categories(own_emotions or EMOTION_TYPES)
    try:
        offered, note = offered_emotions(name, table, emotions.get(name), own_emotions is not None)
    except ValueError as err:
        raise ModelFolderError(f"{source.describe(vdir)}: {err}") from None
    speakers = _table_names(source, vdir, config.unit, "speakers") or _speaker_list(config.unit)
    return CatalogVoice(name, tuple(speakers), offered, table), note


def _open(path: str | Path) -> tuple[Path, _Source, dict[str, Any]]:
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
    return root, _Source(root), root_config


def _voice_names(source: _Source) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(voices with a folder, notes on the listed ones without), as ModelScope's load_voice skips the latter."""
    if source.zip is None and not (source.root / "voices" / "voices.json").is_file():
        raise ModelFolderError(f"{source.root} has neither voices/voices.json nor voices.zip: not a Sambert-HifiGan folder")
    listing = _parse(source, "voices/voices.json", "json")
    names = listing.get("voices") if isinstance(listing, Mapping) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelFolderError(f"{source.describe('voices/voices.json')} must hold a non-empty list under 'voices'")
    present = tuple(n for n in names if source.exists(f"voices/{n}"))
    if not present:
        raise ModelFolderError(f"{source.describe('voices/voices.json')} lists {names!r} but none of them has a "
                               f"folder under {source.describe('voices')}")
    notes = tuple(f"voices.json lists {n!r} but {source.describe(f'voices/{n}')} does not exist; skipped"
                  for n in names if n not in present)
    return present, notes


def read_catalog(path: str | Path, emotions: Mapping[str, tuple[str, ...]] | None = None) -> Catalog:
    """Voices, speakers and emotions of a folder without reading a checkpoint; ModelFolderError names what is wrong.

    emotions: voice -> the emotions it was trained on, for folders that do not say (the --emotions option).
    """
    root, source, root_config = _open(path)
    return _catalog(root, source, root_config, dict(emotions or {}))


def _catalog(root: Path, source: _Source, root_config: Mapping[str, Any],
             emotions: Mapping[str, tuple[str, ...]]) -> Catalog:
    names, notes = _voice_names(source)
    unknown = [v for v in emotions if v not in names]
    if unknown:
        raise ModelFolderError(f"--emotions names {', '.join(map(repr, unknown))}, which {root} does not have; "
                               f"its voices are: {', '.join(names)}")
    voices = {}
    for name in names:
        voices[name], note = _catalog_voice(source, name, _voice_config(source, name, root_config), emotions)
        notes += (note,) if note else ()
    return Catalog(path=root, voices=voices, notes=notes)


def _voice(source: _Source, entry: CatalogVoice, config: _VoiceConfig) -> VoiceFiles:
    vdir = f"voices/{entry.name}"
    am_path, am_keys = config.am_ckpt
    voc_path, voc_keys = config.voc_ckpt
    if config.layout == "current":
        am_path, voc_path = _latest_checkpoint(source, am_path), _latest_checkpoint(source, voc_path)
    am_state = _pick(_load_checkpoint(source, am_path), am_keys, source.describe(am_path))
    voc_state = _pick(_load_checkpoint(source, voc_path), voc_keys, source.describe(voc_path))
    missing = [k for k in EMBEDDINGS.values() if k not in am_state]
    if missing:
        raise ModelFolderError(f"{source.describe(am_path)} lacks {missing}: not a Sambert acoustic checkpoint")
    tables = _tables(source, vdir, config.unit, am_state, _speaker_list(config.unit))
    sizes = {"sy": "phones", "tone": "tones", "syllable_flag": "syllable_flags", "word_segment": "word_segments",
             "emotion": "emotions", "speaker": "speakers"}
    try:
        acoustic = AcousticConfig.from_params(config.am_params, {k: len(getattr(tables, v)) for k, v in sizes.items()})
        vocoder = VocoderConfig.from_params(config.voc_params)
        vocoder_state = convert_generator_state(voc_state)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelFolderError(f"voice {entry.name!r} in {source.root}: {err}") from None
    return VoiceFiles(
        name=entry.name, acoustic=acoustic, vocoder=vocoder, acoustic_state=am_state, vocoder_state=vocoder_state,
        tables=tables, speakers=tuple(s for s in tables.speakers if s not in (PAD, EOS, MASK)),
        emotions=entry.emotions, sample_rate_hz=_sample_rate(source, vdir, vocoder),
    )


def _sample_rate(source: _Source, vdir: str, vocoder: VocoderConfig) -> int:
    rel = f"{vdir}/audio_config.yaml"
    audio = _parse(source, rel, "yaml") if source.exists(rel) else {}
    audio = audio.get("audio_config", audio) if isinstance(audio, Mapping) else {}
    rate = int(audio.get("sampling_rate", SAMPLE_RATE_HZ))
    hop = int(audio.get("hop_length", HOP_SAMPLES))
    if hop != vocoder.hop_samples:
        raise ModelFolderError(f"{source.describe(rel)}: hop_length={hop} but the vocoder upsamples by {vocoder.hop_samples}")
    return rate


def load_model_folder(path: str | Path, emotions: Mapping[str, tuple[str, ...]] | None = None) -> ModelFolder:
    """Read every voice of a folder with its checkpoints; raises ModelFolderError naming the missing or bad file."""
    root, source, root_config = _open(path)
    catalog = _catalog(root, source, root_config, dict(emotions or {}))
    voices = {name: _voice(source, entry, _voice_config(source, name, root_config))
              for name, entry in catalog.voices.items()}
    layout = "current" if all(source.exists(f"voices/{n}/am/config.yaml") for n in voices) else "legacy"
    return ModelFolder(path=root, layout=layout, voices=voices, notes=catalog.notes)
