"""What the official ModelScope pipeline needs in this interpreter, checked without importing it; the fix, exactly."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from app.errors import EngineUnavailableError

MODELSCOPE_WHEELS = "https://modelscope.oss-cn-beijing.aliyuncs.com/releases/repo.html"  # ModelScope's wheel index
INSTALL_COMMAND = (
    f'pip install "modelscope[audio-tts]==1.40.2" "kantts>=1.0.1" "ttsfrd==0.2.1" "setuptools<81" '
    f"-f {MODELSCOPE_WHEELS}"
)
SETUP_STEPS = (
    "python3.10 -m venv .venv-sambert && . .venv-sambert/bin/activate\n"
    "  pip install -r requirements-sambert.txt"
)


def _installed(name: str) -> bool:
    """Whether a top-level module can be found, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _spec_dir(name: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    return Path(spec.origin).parent


def missing_dependencies() -> list[str]:
    """What stops the ModelScope pipeline from running in this interpreter (empty when nothing does)."""
    problems = []
    version = ".".join(map(str, sys.version_info[:3]))
    too_new = sys.version_info >= (3, 11)
    if too_new:
        problems.append(
            f"Python {version} is too new: ttsfrd has wheels only up to Python 3.10, and modelscope's "
            "sambert_hifi.py raises 'Python version needs to be <= 3.10'"
        )
    modelscope_dir = _spec_dir("modelscope")
    if modelscope_dir is None:
        problems.append("modelscope is not installed")
    elif not (modelscope_dir / "models" / "audio" / "tts" / "sambert_hifi.py").is_file():
        problems.append(f"modelscope at {modelscope_dir} has no Sambert-HifiGan model (models/audio/tts/sambert_hifi.py)")
    kantts_dir = _spec_dir("kantts")
    if kantts_dir is None:
        problems.append("kantts is not installed (it comes from ModelScope's wheel index, not PyPI)")
    elif not (kantts_dir / "models" / "sambert").is_dir():
        problems.append(f"kantts at {kantts_dir} is PyPI's empty placeholder (no kantts/models/sambert)")
    if not _installed("ttsfrd"):
        problems.append("ttsfrd is not installed (it comes from ModelScope's wheel index, not PyPI)")
    elif not too_new:
        try:
            ttsfrd = importlib.import_module("ttsfrd")
        except Exception as exc:  # a broken native build raises OSError or ImportError
            problems.append(f"ttsfrd cannot be imported: {type(exc).__name__}: {exc}")
        else:
            if not hasattr(ttsfrd, "TtsFrontendEngine"):
                problems.append("ttsfrd is PyPI's empty placeholder (no TtsFrontendEngine)")
    return problems


def preflight() -> None:
    """Raise EngineUnavailableError, with the exact fix, if this interpreter cannot run the pipeline; cheap."""
    problems = missing_dependencies()
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise EngineUnavailableError(
            f"--engine modelscope cannot run in this environment:\n{listed}\n"
            f"Fix: create a Python 3.10 environment for this engine, from the repository root:\n  {SETUP_STEPS}\n"
            f"(the ModelScope part of that file is: {INSTALL_COMMAND})\n"
            "then run: python launch.py --engine modelscope --model PATH_OR_ID   (see docs/modelscope.md)"
        )


def pipeline_device() -> str:
    """The device ModelScope's Voice will really use: cuda:$RANK whenever torch sees CUDA, else cpu."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('RANK', 0))}"


def restore_scipy_kaiser() -> None:
    """kantts/models/pqmf.py imports scipy.signal.kaiser, an alias SciPy 1.13 removed; point it at the same function."""
    import scipy.signal

    if not hasattr(scipy.signal, "kaiser"):
        from scipy.signal.windows import kaiser

        scipy.signal.kaiser = kaiser
