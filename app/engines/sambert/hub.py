"""ModelScope model folders by path or hub id: found in the local cache, downloaded with progress, or a fast offline error.

Both Sambert engines take `--model PATH_OR_ID`. An id is fetched by ModelScope's own `snapshot_download` (modelscope is
a dependency): its cache first, then the hub with per-file progress bars. Offline, that call would retry for tens of
seconds; modelscope_hub reads its retry and timeout knobs from the environment when it is first imported, so they are
set (unless the user set them) before the import: one retry and a 5 s connect timeout for the small listing request
(file downloads keep modelscope's own retries). Measured here, with no route to the hub: 22 s with modelscope's
defaults, 0.007 s with these (importing modelscope itself takes 2-4 s; `launch.py --say` exits in 3.8 s).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

from app.errors import EngineUnavailableError

DEFAULT_MODEL = "damo/speech_sambert-hifigan_tts_zh-cn_16k"  # zhitian_emo, zhiyan_emo, zhizhe_emo, zhibei_emo
Downloader = Callable[[str], str]  # hub model id -> local model folder
FAIL_FAST = {  # modelscope_hub/constants.py environment knobs, read once when modelscope_hub is imported
    "MODELSCOPE_API_MAX_RETRIES": "1",  # retries of one API request (default 5, with backoff)
    "MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": "1",  # attempts at one page of the file listing (default 4)
    "MODELSCOPE_API_CONNECT_TIMEOUT": "5",  # seconds to connect (default 10)
}


def download_command(model_id: str, folder: str) -> str:
    """The modelscope CLI line that fetches model_id into folder."""
    return f"modelscope download --model {model_id} --local_dir {folder}"


def local_folder_for(model_id: str) -> str:
    """Where the offline message suggests putting a model: ./models/<name>."""
    return f"./models/{model_id.split('/')[-1]}"


def looks_like_hub_id(model: str) -> bool:
    """Whether model reads as a hub id "owner/name" rather than a path (the rule modelscope itself applies)."""
    if os.path.isabs(model) or "\\" in model or model.count("/") != 1 or model.startswith(("~", ".")):
        return False
    owner, name = model.split("/")
    return bool(owner and name)


def download_snapshot(model_id: str) -> str:
    """Default downloader: modelscope's local cache first, then the hub, with a progress bar per file."""
    if "modelscope_hub" not in sys.modules:  # afterwards its constants are fixed: the knobs would do nothing
        for name, value in FAIL_FAST.items():
            os.environ.setdefault(name, value)
    from modelscope.hub.callback import TqdmCallback
    from modelscope.hub.snapshot_download import snapshot_download

    try:
        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not in the cache (modelscope raises several types): fetch it
        print(f"downloading {model_id} from the ModelScope hub ...", file=sys.stderr)
        return snapshot_download(model_id, progress_callbacks=[TqdmCallback])


def resolve_model_folder(model: str, downloader: Downloader, engine: str) -> Path:
    """A local folder as given, or a hub id fetched (or found in the cache) by downloader; absolute.

    engine names the --engine the offline message tells the user to run again.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if looks_like_hub_id(model):
        local = local_folder_for(model)
        try:
            return Path(downloader(model)).resolve()
        except Exception as exc:  # noqa: BLE001 - whatever the hub client raised, the fix is the same
            raise EngineUnavailableError(
                f"model {model!r} is not a local folder, not in the ModelScope cache, and could not be downloaded "
                f"({type(exc).__name__}: {str(exc)[:300]}). On a machine that reaches the hub run:\n"
                f"  {download_command(model, local)}\n"
                f"then copy that folder here (to {local}) and run: python launch.py --engine {engine} --model {local}"
            ) from None
    problem = "is a file, not a model folder" if path.exists() else "does not exist"
    raise EngineUnavailableError(
        f"model folder {model!r} {problem}; download one with:\n  {download_command(DEFAULT_MODEL, model)}\n"
        f"or pass a hub id such as --model {DEFAULT_MODEL}")


def check_pipeline_folder(folder: Path) -> None:
    """Raise EngineUnavailableError unless folder has what ModelScope's pipeline reads first (configuration.json)."""
    if not (folder / "configuration.json").is_file():
        raise EngineUnavailableError(
            f"{folder} is not a ModelScope model folder: configuration.json is missing; download one with: "
            f"{download_command(DEFAULT_MODEL, str(folder))}")
