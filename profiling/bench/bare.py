"""Run a module as the bare GPU box would: the packages this project installs but that box lacks cannot be imported.

    python -m profiling.bench.bare MODULE [ARGS ...]      (like python -m MODULE ARGS ...)

The lent GPU machines have Python, torch (CUDA), numpy, pandas, pyyaml, pytest, safetensors, onnx, onnxruntime and
nvidia-ml-py, and none of BARE_BOX_MISSING. Every section of profiling/bench/gpu_suite.py runs through here, on the
GPU box and in the CPU dry run alike, so an import that would fail there (a module-level `import pyworld` on the
service's path, say) fails the dry run here first.
"""
from __future__ import annotations

import importlib.abc
import runpy
import sys

# In requirements*.txt (or imported by this project) and not on the lent GPU box.
BARE_BOX_MISSING = ("gradio", "gradio_client", "plotly", "phkit", "jieba", "pypinyin", "pyworld", "ray", "modelscope",
                    "scipy", "psutil", "playwright", "kantts", "ttsfrd")


class _Missing(importlib.abc.MetaPathFinder):
    """Refuses the missing packages before any other finder can find them."""

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in BARE_BOX_MISSING:
            raise ModuleNotFoundError(f"No module named {name!r} (the bare GPU box has no {top}; profiling/bench/bare.py)",
                                      name=name)
        return None


def block() -> None:
    """From now on, importing any of BARE_BOX_MISSING raises ModuleNotFoundError (already imported ones stay)."""
    loaded = sorted(m for m in BARE_BOX_MISSING if m in sys.modules)
    if loaded:
        raise RuntimeError(f"already imported before blocking: {', '.join(loaded)}")
    if not any(isinstance(f, _Missing) for f in sys.meta_path):
        sys.meta_path.insert(0, _Missing())


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m profiling.bench.bare MODULE [ARGS ...]")
    block()
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
