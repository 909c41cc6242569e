"""ModelScope model folders by path or hub id: found in the local cache, downloaded, or a clear offline error."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from app.errors import EngineUnavailableError

DEFAULT_MODEL = "damo/speech_sambert-hifigan_tts_zh-cn_16k"  # zhitian_emo, zhiyan_emo, zhizhe_emo, zhibei_emo
Downloader = Callable[[str], str]  # hub model id -> local model folder


def download_command(model_id: str, folder: str) -> str:
    """The modelscope CLI line that fetches model_id into folder."""
    return f"modelscope download --model {model_id} --local_dir {folder}"


def looks_like_hub_id(model: str) -> bool:
    """Whether model reads as a hub id "owner/name" rather than a path (the rule modelscope itself applies)."""
    if os.path.isabs(model) or "\\" in model or model.count("/") != 1 or model.startswith(("~", ".")):
        return False
    owner, name = model.split("/")
    return bool(owner and name)


def download_snapshot(model_id: str) -> str:
    """Default downloader: modelscope's local cache first, then the hub."""
    from modelscope.hub.snapshot_download import snapshot_download

    try:
        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # not cached: fetch it
        return snapshot_download(model_id)


def check_model_folder(folder: Path) -> None:
    """Raise EngineUnavailableError unless folder is laid out as a ModelScope Sambert-HifiGan model."""
    for needed in ("configuration.json", "voices/voices.json"):
        if not (folder / needed).is_file():
            raise EngineUnavailableError(
                f"{folder} is not a ModelScope Sambert-HifiGan model folder: {needed} is missing; download one with: "
                f"{download_command(DEFAULT_MODEL, str(folder))}"
            )


def resolve_model_folder(model: str, downloader: Downloader) -> Path:
    """A local folder as given, or a hub id fetched (or found in the cache) by downloader; absolute."""
    path = Path(model).expanduser()
    if path.is_dir():
        folder = path
    elif looks_like_hub_id(model):
        local = f"./models/{model.split('/')[1]}"
        try:
            folder = Path(downloader(model))
        except Exception as exc:
            raise EngineUnavailableError(
                f"model {model!r} is not a local folder, not in the ModelScope cache, and could not be downloaded "
                f"({type(exc).__name__}: {exc}). On a machine that reaches the hub run:\n"
                f"  {download_command(model, local)}\n"
                f"then copy that folder here and run: python launch.py --engine modelscope --model {local}"
            ) from None
    else:
        problem = "is a file, not a model folder" if path.exists() else "does not exist"
        raise EngineUnavailableError(
            f"model folder {model!r} {problem}; download one with:\n"
            f"  {download_command(DEFAULT_MODEL, model)}"
        )
    check_model_folder(folder)
    return folder.resolve()

