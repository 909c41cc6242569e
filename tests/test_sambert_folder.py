"""Reading ModelScope Sambert-HifiGan folders in both layouts: catalog, emotions rule, weights, clear errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from app.errors import EngineUnavailableError
from app.engines.sambert.emotions import CATEGORIES, PUBLISHED, parse_emotions_option
from app.engines.sambert.folder import ModelFolderError, load_model_folder, read_catalog
from app.engines.sambert.symbols import EMOTION_TYPES
from tests.fixtures.sambert_writer import FolderSpec, acoustic_config, random_acoustic_state
from tests.fixtures.sambert_writer import make_folder


@pytest.fixture(scope="module")
def current(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("cur"), voices=("alpha", "zhiyan_emo"), checkpoint_steps=(500, 20000, 3000))


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("leg"), layout="legacy", emotions=("emotion_neutral", "emotion_angry"))


def test_current_layout_loads_every_voice_in_order(current):
    folder = load_model_folder(current)
    assert folder.layout == "current"
    assert list(folder.voices) == ["alpha", "zhiyan_emo"]
    voice = folder.voices["alpha"]
    assert voice.speakers == ("F7",)
    assert voice.sample_rate_hz == 16000 and voice.vocoder.hop_samples == 200
    assert voice.tables.emotions[: len(EMOTION_TYPES)] == EMOTION_TYPES
    # The current layout lists no emotions: an unknown voice offers neutral and says how to tell it more ...
    assert voice.emotions == ("neutral",)
    assert any("--emotions alpha=happy,sad" in note for note in folder.notes)
    # ... and a published voice offers what its model card documents.
    assert folder.voices["zhiyan_emo"].emotions == PUBLISHED["zhiyan_emo"][0]


def test_highest_checkpoint_step_wins(current):
    voice = load_model_folder(current).voices["alpha"]
    expected = random_acoustic_state(acoustic_config(FolderSpec(), EMOTION_TYPES), 5.0, seed=0)
    key = "text_encoder.sy_emb.weight"
    assert torch.equal(voice.acoustic_state[key], expected[key])  # step 20000, not the decoys 500 / 3000


def test_legacy_layout_reads_voices_zip_and_its_own_dictionaries(legacy):
    folder = load_model_folder(legacy)
    assert folder.layout == "legacy"
    voice = folder.voices["test_voice"]
    assert voice.tables.emotions[:3] == ("emotion_none", "emotion_neutral", "emotion_angry")
    assert voice.emotions == ("neutral", "angry")  # its own table is its list
    assert voice.acoustic.emotion == 3 + 3  # three dictionary entries + pad, end, mask


def test_has_mask_false_means_every_table_one_row_smaller(tmp_path):
    with_mask = load_model_folder(make_folder(tmp_path, "a")).voices["test_voice"]
    without = load_model_folder(make_folder(tmp_path, "b", has_mask=False)).voices["test_voice"]
    for field in ("sy", "tone", "syllable_flag", "word_segment", "emotion", "speaker"):
        assert getattr(without.acoustic, field) == getattr(with_mask.acoustic, field) - 1
    assert without.tables.phones[-1] == "~"


def _broken_copy(src, tmp_path, name="broken"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_and_missing_voices_json_are_named(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_model_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="voices.json nor voices.zip"):
        load_model_folder(tmp_path / "empty")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "voices/voices.json").write_text("{not json"), "not valid json"),
        (lambda d: (d / "voices/voices.json").write_text(json.dumps({"voices": []})), "non-empty list"),
        (lambda d: (d / "voices/voices.json").write_text(json.dumps({"voices": ["ghost"]})), "'ghost'.*none of them"),
        (lambda d: (d / "voices/test_voice/am/config.yaml").unlink(), "missing file .*am/config.yaml"),
        (lambda d: [p.unlink() for p in (d / "voices/test_voice/voc/ckpt").iterdir()], "no checkpoint_<step>.pth"),
        (lambda d: (d / "voices/test_voice/am/ckpt/checkpoint_1000.pth").write_bytes(b"garbage"), "cannot read checkpoint"),
        (lambda d: (d / "voices/test_voice/am/config.yaml").write_text("Model: {}\n"), "lacks"),
        (lambda d: torch.save({"weights": {}}, d / "voices/test_voice/voc/ckpt/checkpoint_1000.pth"), "no model/generator"),
        (lambda d: (d / "configuration.json").write_text("{"), "configuration.json is not valid JSON"),
    ],
    ids=["bad-json", "no-voices", "unknown-voice", "no-am-config", "no-voc-ckpt", "corrupt-ckpt", "bad-am-yaml",
         "wrong-ckpt-keys", "bad-configuration"],
)
def test_malformed_current_folders_give_clear_errors(tmp_path, damage, message):
    folder = make_folder(tmp_path, "ok")
    damage(folder)
    with pytest.raises(EngineUnavailableError, match=message):
        load_model_folder(folder)


def test_dictionary_that_disagrees_with_the_checkpoint_is_reported(tmp_path):
    folder = make_folder(tmp_path)
    (folder / "voices/test_voice/dict").mkdir()
    (folder / "voices/test_voice/dict/tone_dict.txt").write_text("tone1\ntone2\n")
    with pytest.raises(ModelFolderError, match="tone_emb.weight has 10 rows but the tones table has 2"):
        load_model_folder(folder)


def test_unsupported_language_and_corrupt_zip_are_reported(tmp_path, legacy):
    folder = make_folder(tmp_path)
    cfg = folder / "voices/test_voice/am/config.yaml"
    cfg.write_text(cfg.read_text().replace("cleaners:", "language: Sichuan\n  cleaners:"))
    with pytest.raises(ModelFolderError, match="Sichuan"):
        load_model_folder(folder)
    broken = _broken_copy(legacy, tmp_path)
    (broken / "voices.zip").write_bytes(b"PK not really")
    with pytest.raises(ModelFolderError, match="not a valid zip"):
        load_model_folder(broken)


def test_the_catalog_reads_no_checkpoint(current, tmp_path):
    folder = _broken_copy(current, tmp_path)
    for ckpt in folder.glob("voices/*/*/ckpt/*.pth"):
        ckpt.write_bytes(b"not read by the catalog")
    catalog = read_catalog(folder, {"alpha": ("happy", "sad")})
    assert catalog.voices["alpha"].emotions == ("neutral", "happy", "sad") and catalog.voices["alpha"].speakers == ("F7",)
    assert catalog.voices["zhiyan_emo"].emotions == PUBLISHED["zhiyan_emo"][0]


def test_a_listed_voice_without_a_folder_is_skipped_with_a_note(current, tmp_path):
    folder = _broken_copy(current, tmp_path)
    (folder / "voices/voices.json").write_text(json.dumps({"voices": ["ghost", "alpha"]}))
    catalog = read_catalog(folder)
    assert list(catalog.voices) == ["alpha"] and any("'ghost'" in n and "skipped" in n for n in catalog.notes)


def test_explicit_emotions_are_checked_against_the_folder(current, legacy):
    with pytest.raises(ModelFolderError, match="--emotions names 'nobody'.*alpha, zhiyan_emo"):
        read_catalog(current, {"nobody": ("happy",)})
    with pytest.raises(ModelFolderError, match="emotion table has no 'happy'"):
        read_catalog(legacy, {"test_voice": ("happy",)})  # its own table: neutral and angry only
    assert read_catalog(current, {"zhiyan_emo": ("sad",)}).voices["zhiyan_emo"].emotions == ("neutral", "sad")


def test_the_emotions_option_is_parsed_and_checked_against_kantts_categories():
    assert parse_emotions_option(["a=happy,sad", "b=calm; c=emotion_fear"]) == (
        ("a", ("happy", "sad")), ("b", ("calm",)), ("c", ("fear",)))
    with pytest.raises(ValueError, match="'furious' is not a KAN-TTS emotion category"):
        parse_emotions_option(["a=happy,furious"])
    for bad in ("a", "=happy", "a="):
        with pytest.raises(ValueError, match="VOICE=EMOTION"):
            parse_emotions_option([bad])
    assert "none" not in CATEGORIES and not any("placeholder" in c for c in CATEGORIES)
    for emotions, source in PUBLISHED.values():  # every published list is encodable by KAN-TTS's table
        assert set(emotions) <= set(CATEGORIES) and source.startswith("https://modelscope.cn/models/damo/")
