"""Process and PyTorch-allocator memory, read without side effects: never imports torch, never initialises CUDA."""
from __future__ import annotations

import os
import sys

NAN = float("nan")
MIB = 1024 * 1024  # bytes in one MiB
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

try:  # optional: only used where /proc is missing (macOS)
    import psutil as _psutil
except ImportError:
    _psutil = None


def rss_mib() -> float:
    """This process's resident host memory in MiB (NaN when it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES / MIB
    except (OSError, ValueError, IndexError):
        pass
    if _psutil is not None:
        try:
            return _psutil.Process().memory_info().rss / MIB
        except Exception:
            pass
    return NAN


def torch_cuda_mib(device_index: int = 0) -> dict[str, float]:
    """PyTorch's allocated / reserved / peak-allocated MiB on a device; NaN unless the app already initialised CUDA.

    Importing torch here would cost seconds, and touching torch.cuda first would create a CUDA context.
    """
    out = {"torch_allocated_mib": NAN, "torch_reserved_mib": NAN, "torch_peak_mib": NAN}
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return out
    out["torch_allocated_mib"] = torch.cuda.memory_allocated(device_index) / MIB
    out["torch_reserved_mib"] = torch.cuda.memory_reserved(device_index) / MIB
    out["torch_peak_mib"] = torch.cuda.max_memory_allocated(device_index) / MIB
    return out
