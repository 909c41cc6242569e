"""What "FP16 on" runs, per module: the one table per engine to flip a module between fp16, bf16 and fp32.

Which precision is fastest while staying right (finite output, same frame counts, unchanged intelligibility) is
measured per module by `profiling/bench/gpu_suite.sh`; an engine's `HALF_PRECISION` records the choice.
"""
from __future__ import annotations

from typing import Mapping

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_table(table: Mapping[str, str], modules: tuple[str, ...]) -> dict[str, str]:
    """A complete module -> precision table, or a ValueError naming the bad module or precision."""
    for module, name in table.items():
        if module not in modules:
            raise ValueError(f"unknown module {module!r}; the modules are {', '.join(modules)}")
        if name not in DTYPES:
            raise ValueError(f"precision {name!r} for {module} is not one of {', '.join(DTYPES)}")
    missing = [m for m in modules if m not in table]
    if missing:
        raise ValueError(f"no precision given for {', '.join(missing)}")
    return dict(table)


def cast(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast a module's floating-point weights in place, losslessly across toggles.

    The first cast below FP32 keeps an FP32 copy of the module's state on the host (tens of MiB); a cast back to FP32
    restores it, so FP16 on and off again (or the self-check's trial and fallback) never leaves FP32 weights rounded.
    """
    master = getattr(module, "_fp32_master", None)
    if dtype == torch.float32:
        module.to(dtype)
        if master is not None:
            with torch.no_grad():
                for name, tensor in module.state_dict(keep_vars=True).items():
                    tensor.copy_(master[name])
        return
    if master is None and all(p.dtype == torch.float32 for p in module.parameters()):
        module._fp32_master = {name: t.detach().to("cpu", copy=True) for name, t in module.state_dict().items()}
    module.to(dtype)


def label(table: Mapping[str, str], always_fp32: str = "") -> str:
    """E.g. {"acoustic": "fp16", "vocoder": "fp32"} -> "fp16 (vocoder fp32)": the first module's precision, then the
    modules that differ from it, then what always stays FP32."""
    items = list(table.items())
    main = items[0][1]
    others = [f"{module} {name}" for module, name in items[1:] if name != main]
    if always_fp32:
        others.append(f"{always_fp32} fp32")
    return main + (f" ({', '.join(others)})" if others else "")
