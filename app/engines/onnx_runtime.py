"""ONNX Runtime for the non-autoregressive parts (the vocoders): export once, check the file, run it.

`OrtPart.build(module, ...)` exports a module with torch's ONNX exporter (torch.export based; needs the packages of
requirements-onnx.txt) into a cache folder, once per weights and precision: the file is named by the part and its
dtype, and a JSON beside it records the sha256 of the module's weights, the exporter recipe version, torch's version
and the sha256 of the .onnx file itself. A file whose record does not match (other weights, an older recipe, a
truncated or edited file) is stale or corrupt: it is exported again, never loaded. After loading, the session is run
once on a probe input and compared with the module; a difference above tolerance is a failed build.

Providers: the CPU provider; on CUDA the CUDA provider when onnxruntime-gpu is installed, with I/O binding so the
mel and the waveform stay on the device and ORT runs on torch's current stream. Without it on CUDA the build fails
with the reason (running a CUDA model through the host would be slower than torch, never faster).
Engines catch every failure here and keep torch in force, with a note (EngineBase.set_runtime).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from app.engines.checkpoints import sha256_of

log = logging.getLogger(__name__)

EXPORT_RECIPE = 1  # bump when the export changes (opset, dynamic axes, names): every older file is then stale
OPSET = 18
INPUT, OUTPUT = "mel", "wave"
PROBE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2}  # max |ORT - torch| on the probe input, per dtype
INSTALL_HINT = "pip install -r requirements-onnx.txt (onnxruntime, onnx, onnxscript; onnxruntime-gpu for CUDA)"


class OnnxUnavailableError(RuntimeError):
    """ONNX Runtime cannot run this part here (package missing, no provider for the device, dtype unsupported)."""


def unavailable_reason(device: str = "cpu") -> str | None:
    """Why ONNX Runtime cannot run on device here, or None when it can (packages importable, provider present)."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError as err:
        return f"ONNX Runtime is not installed ({err.name} missing): {INSTALL_HINT}"
    if device.startswith("cuda") and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return ("ONNX Runtime here has no CUDA provider (the CPU package is installed): install onnxruntime-gpu "
                "for the CUDA provider; torch stays in force on CUDA")
    return None


def cache_root() -> Path:
    """$TTS_CACHE_DIR/onnx, else ~/.cache/zh-tts-demo/onnx."""
    return Path(os.environ.get("TTS_CACHE_DIR") or Path.home() / ".cache" / "zh-tts-demo") / "onnx"


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over the module's state (names, dtypes, shapes, values): the key an exported file must match."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _record(weights: str) -> dict:
    return {"weights_sha256": weights, "export_recipe": EXPORT_RECIPE, "opset": OPSET, "torch": torch.__version__}


def cached_file_problem(path: Path, weights: str) -> str | None:
    """Why the cached export at path cannot be used for these weights (None: it matches, byte for byte)."""
    meta = path.with_suffix(".json")
    if not path.exists() or not meta.exists():
        return "not exported yet"
    try:
        record = json.loads(meta.read_text())
    except (OSError, ValueError):
        return "its record is unreadable"
    for key, value in _record(weights).items():
        if record.get(key) != value:
            return f"stale: exported for {key}={str(record.get(key))[:16]}, now {str(value)[:16]}"
    if record.get("onnx_sha256") != sha256_of(path):
        return "corrupt: the file's sha256 differs from the one recorded at export"
    return None


def export(module: torch.nn.Module, example: torch.Tensor, path: Path, weights: str) -> float:
    """Export module (input (B, C, T) -> output (B, samples)) to path with its record; returns seconds.

    Written to a temporary name and renamed, record last: a crash mid-export leaves no file that looks complete."""
    import warnings

    t0 = time.monotonic()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    batch, frames = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("frames", min=8, max=100_000)
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]  # per-pass INFO lines
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not ours to act on
            program = torch.onnx.export(module, (example,), None, input_names=[INPUT], output_names=[OUTPUT],
                                        dynamic_shapes=({0: batch, 2: frames},), opset_version=OPSET, dynamo=True,
                                        external_data=False, verbose=False, report=False)
            program.save(str(tmp))
        path.with_suffix(".json").unlink(missing_ok=True)
        os.replace(tmp, path)
        record = dict(_record(weights), onnx_sha256=sha256_of(path), exported_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    finally:
        tmp.unlink(missing_ok=True)
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return time.monotonic() - t0


@dataclass
class OrtPart:
    """One exported module run by ONNX Runtime; called like the module: (B, C, T) tensor -> (B, samples) tensor."""

    name: str  # the exported file's stem, e.g. "embedded-melgan-fp32"
    session: object  # onnxruntime.InferenceSession
    device: torch.device
    dtype: torch.dtype
    samples_per_frame: int  # output length = frames * samples_per_frame (binds the output buffer on CUDA)
    provider: str
    export_s: float  # seconds spent exporting on this build (0.0: the cached file was used)
    probe_error: float  # max |ORT - torch| on the probe input

    @classmethod
    def build(cls, module: torch.nn.Module, name: str, cache_dir: Path, samples_per_frame: int, channels: int,
              probe_frames: int = 148, progress: Callable[[str], None] | None = None) -> "OrtPart":
        """Export (if the cached file does not match) and load module; OnnxUnavailableError or another error if not.

        progress gets one line before a long step (the export takes seconds)."""
        param = next(module.parameters())
        device, dtype = param.device, param.dtype
        why = unavailable_reason(str(device))
        if why:
            raise OnnxUnavailableError(why)
        if dtype not in PROBE_TOLERANCE:
            raise OnnxUnavailableError(f"ONNX Runtime has no {str(dtype).removeprefix('torch.')} path for {name}; torch runs it")
        tag = {torch.float32: "fp32", torch.float16: "fp16"}[dtype]
        path = Path(cache_dir) / f"{name}-{tag}.onnx"
        weights = weights_sha256(module)
        generator = torch.Generator().manual_seed(0)
        probe = (torch.randn(2, channels, probe_frames, generator=generator) - 4.0).to(device, dtype)
        export_s = 0.0
        problem = cached_file_problem(path, weights)
        if problem is not None:
            (progress or log.info)(f"exporting {name} ({tag}) to ONNX at {path}: {problem}; takes a few seconds, once")
            export_s = export(module, probe[:1], path, weights)
        part = cls._load(path, name, device, dtype, samples_per_frame, export_s)
        with torch.no_grad():
            expected = module(probe).float()
        got = part(probe).float()
        part.probe_error = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
        if not part.probe_error <= PROBE_TOLERANCE[dtype]:
            raise RuntimeError(f"{name} on ONNX Runtime differs from torch by {part.probe_error:.2e} on the probe "
                               f"(tolerance {PROBE_TOLERANCE[dtype]:.0e})")
        return part

    @classmethod
    def _load(cls, path: Path, name: str, device: torch.device, dtype: torch.dtype, samples_per_frame: int,
              export_s: float) -> "OrtPart":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        if device.type == "cuda":
            stream = torch.cuda.current_stream(device).cuda_stream
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0, "has_user_compute_stream": "1",
                                                     "user_compute_stream": str(stream)})]
        else:
            options.intra_op_num_threads = torch.get_num_threads()  # the same CPU share torch was given
            providers = ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), options, providers=providers)
        return cls(path.stem, session, device, dtype, samples_per_frame, session.get_providers()[0], export_s, float("nan"))

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            out = self.session.run([OUTPUT], {INPUT: mel.detach().to(self.dtype).contiguous().numpy()})[0]
            return torch.from_numpy(out)
        return self._run_bound(mel)

    def _run_bound(self, mel: torch.Tensor) -> torch.Tensor:
        """CUDA: bind torch's buffers as ORT's input and output (no host round trip; ORT runs on torch's stream)."""
        mel = mel.detach().to(self.dtype).contiguous()
        out = torch.empty((mel.shape[0], mel.shape[2] * self.samples_per_frame), device=mel.device, dtype=self.dtype)
        element = np.float16 if self.dtype == torch.float16 else np.float32
        index = mel.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(INPUT, "cuda", index, element, tuple(mel.shape), mel.data_ptr())
        binding.bind_output(OUTPUT, "cuda", index, element, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out

    def describe(self) -> str:
        exported = f", exported in {self.export_s:.1f} s" if self.export_s else ""
        return f"{self.name} on {self.provider.removesuffix('ExecutionProvider')}{exported}"
