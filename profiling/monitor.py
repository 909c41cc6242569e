"""Background GPU and process sampler: one flat row per tick into a bounded, thread-safe buffer."""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from types import ModuleType
from typing import Any, Callable

import pandas as pd

from app.memory import MIB, NAN, rss_mib, torch_cuda_mib

log = logging.getLogger(__name__)

NO_DRIVER_NOTE = "NVML not available (no NVIDIA driver): showing process RSS and CPU instead"
NO_PYNVML_NOTE = "NVML not available (nvidia-ml-py not installed): showing process RSS and CPU instead"

# Every sample carries these columns, in this order; columns from the extra probe follow them.
SAMPLE_COLUMNS = (
    "t",  # time.time() when the sample was taken, seconds since the epoch
    "vram_used_mib",  # device memory in use by all processes (NVML)
    "vram_total_mib",  # device memory size (NVML)
    "gpu_util_pct",  # share of the last sample period a kernel was running (NVML)
    "mem_util_pct",  # share of the last sample period device memory was read or written (NVML)
    "power_w",  # board power draw (NVML)
    "temp_c",  # GPU core temperature (NVML)
    "proc_vram_mib",  # this process's device memory, CUDA context included (NVML process list)
    "torch_allocated_mib",  # memory held by live tensors (torch.cuda.memory_allocated)
    "torch_reserved_mib",  # memory the caching allocator holds (torch.cuda.memory_reserved)
    "torch_peak_mib",  # high-water mark of allocated since the last reset (torch.cuda.max_memory_allocated)
    "rss_mib",  # this process's resident host memory
    "cpu_pct",  # this process's CPU use since the previous sample; 100 = one core busy
)
NVML_COLUMNS = SAMPLE_COLUMNS[1:8]
TORCH_COLUMNS = SAMPLE_COLUMNS[8:11]

class Monitor:
    """Samples device, allocator and process metrics about 4 times a second in its own daemon thread."""

    def __init__(
        self,
        interval_s: float = 0.25,
        capacity: int = 2400,
        device_index: int = 0,
        extra: Callable[[], dict[str, float]] | None = None,
        nvml: ModuleType | Any | None = None,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s={interval_s} must be positive")
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be at least 1")
        if device_index < 0:
            raise ValueError(f"device_index={device_index} must be 0 or more")
        self.interval_s = interval_s  # seconds between samples
        self.device_index = device_index  # CUDA device index, as torch numbers it
        self._extra = extra  # cheap probe of service state; must not call back into the monitor
        self._buffer: deque[dict[str, float]] = deque(maxlen=capacity)
        # Held only to append or copy rows, never across a metric read, so readers never wait on NVML.
        self._buffer_lock = threading.Lock()
        # Serialises samplers (thread and sample_once callers) so rows stay in time order and CPU deltas
        # pair up; nothing on the request path takes it.
        self._sample_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._last_cpu: tuple[float, float] | None = None  # (monotonic s, process CPU s) at the last sample
        self._logged: set[str] = set()
        self._nvml: Any = None
        self._handle: Any = None
        self._memory_version: int | None = None  # nvmlMemory_v2 while the driver accepts it
        self._use_temperature_v = True  # nvmlDeviceGetTemperatureV until the driver proves it lacks it
        self._note: str | None = None
        self._device_name = "CPU (no NVIDIA GPU)"
        self._open_nvml(nvml)

    # -- public API ---------------------------------------------------------------------------------

    @property
    def note(self) -> str | None:
        """Why GPU metrics are missing, in words for the panel; None when NVML works."""
        return self._note

    @property
    def gpu_available(self) -> bool:
        """True when NVML opened the device and GPU columns are being filled."""
        return self._handle is not None

    @property
    def device_name(self) -> str:
        """The GPU's marketing name, or a CPU label when there is none."""
        return self._device_name

    def start(self) -> "Monitor":
        """Start the sampling thread (no-op if it is already running)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop_event = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop_event,), name="profiling-monitor", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the sampling thread; the buffer and NVML stay open, so start() may follow."""
        thread, self._thread = self._thread, None
        self._stop_event.set()
        if thread is not None and thread is not threading.current_thread():
            # Bounded: a hung NVML call (GPU fallen off the bus) must not hang shutdown; the thread is a daemon.
            thread.join(timeout=max(1.0, 4 * self.interval_s))

    def close(self) -> None:
        """Stop sampling and release NVML; later samples carry process metrics only."""
        self.stop()
        # A sample stuck in a hung driver call keeps the lock; then leave NVML open rather than hang here.
        if not self._sample_lock.acquire(timeout=max(1.0, 4 * self.interval_s)):
            log.warning("monitor sample still running at close; NVML left open")
            return
        try:
            nvml, self._nvml, self._handle = self._nvml, None, None
        finally:
            self._sample_lock.release()
        if nvml is not None:
            _shutdown(nvml)

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def sample_once(self) -> dict[str, float]:
        """Take one sample now, append it to the buffer and return a copy; never raises."""
        with self._sample_lock:
            row: dict[str, float] = {"t": time.time()}
            row.update(self._read_nvml())
            row.update(self._read_torch())
            row.update(self._read_process())
            row.update(self._read_extra(row))
            with self._buffer_lock:
                self._buffer.append(row)
        return dict(row)

    def frame(self, since: float | None = None) -> pd.DataFrame:
        """Buffered samples taken after time `since` (all when None), oldest first, one column per metric."""
        rows = self._rows()
        if since is not None:
            # Rows are in time order, so scan back from the newest; an incremental poll touches few rows.
            start = len(rows)
            while start > 0 and rows[start - 1]["t"] > since:
                start -= 1
            rows = rows[start:]
        return _to_frame(rows)

    def summary(self, t0: float, t1: float) -> dict[str, float]:
        """Peaks and means over samples with t0 <= t <= t1; NaN where a metric was not available."""
        return window_summary(_to_frame([row for row in self._rows() if t0 <= row["t"] <= t1]))

    # -- sampling -----------------------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        next_tick_s = time.monotonic()
        while not stop.is_set():
            try:
                self.sample_once()
            except Exception:  # every reader guards itself; this only keeps a bug from killing the thread
                self._log_once("loop", logging.ERROR, "monitor sample failed", exc_info=True)
            next_tick_s += self.interval_s
            delay_s = next_tick_s - time.monotonic()
            if delay_s < 0:  # fell behind (slow driver, suspended process): skip missed ticks, don't burst
                next_tick_s = time.monotonic() + self.interval_s
                delay_s = self.interval_s
            stop.wait(delay_s)

    def _rows(self) -> list[dict[str, float]]:
        with self._buffer_lock:
            return list(self._buffer)

    def _open_nvml(self, nvml: Any) -> None:
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                self._note = NO_PYNVML_NOTE
                return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded on machines without a driver
            self._note = _init_failure_note(nvml, exc)
            log.info("%s", self._note)
            return
        try:
            handle = _device_handle(nvml, self.device_index)
        except Exception as exc:
            self._note = f"NVML cannot open CUDA device {self.device_index} ({_describe(exc)}): " \
                         "showing process RSS and CPU instead"
            log.warning("%s", self._note)
            _shutdown(nvml)
            return
        self._nvml, self._handle = nvml, handle
        self._memory_version = getattr(nvml, "nvmlMemory_v2", None)
        name = self._query("nvmlDeviceGetName", handle)
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        self._device_name = str(name) if name else f"NVIDIA GPU {self.device_index}"

    def _query(self, function: str, *args: Any, **kwargs: Any) -> Any:
        """Call one NVML function by name; None when it fails, logged once per function and error."""
        try:
            return getattr(self._nvml, function)(*args, **kwargs)
        except Exception as exc:
            # NotSupported is routine (power on some boards, utilization on MIG slices); an older
            # pynvml lacking the function (AttributeError) is equally "not available" to a monitor.
            self._log_once(f"{function}:{type(exc).__name__}", logging.DEBUG, "%s unavailable: %s",
                           function, _describe(exc))
            return None

    def _read_nvml(self) -> dict[str, float]:
        row = dict.fromkeys(NVML_COLUMNS, NAN)
        handle = self._handle
        if handle is None:
            return row
        memory = self._read_memory(handle)
        if memory is not None:
            row["vram_used_mib"] = memory.used / MIB
            row["vram_total_mib"] = memory.total / MIB
        utilization = self._query("nvmlDeviceGetUtilizationRates", handle)
        if utilization is not None:
            row["gpu_util_pct"] = float(utilization.gpu)
            row["mem_util_pct"] = float(utilization.memory)
        power_mw = self._query("nvmlDeviceGetPowerUsage", handle)
        if power_mw is not None:
            row["power_w"] = power_mw / 1000.0
        row["temp_c"] = self._read_temperature_c(handle)
        row["proc_vram_mib"] = _own_process_mib(self._query("nvmlDeviceGetComputeRunningProcesses", handle))
        return row

    def _read_memory(self, handle: Any) -> Any:
        # v2 reports "used" without the driver-reserved slice (as nvidia-smi does); older drivers lack it.
        if self._memory_version is not None:
            memory = self._query("nvmlDeviceGetMemoryInfo", handle, version=self._memory_version)
            if memory is not None:
                return memory
        memory = self._query("nvmlDeviceGetMemoryInfo", handle)
        if memory is not None:
            self._memory_version = None  # v1 works where v2 did not: stop paying for the failed call
        return memory

    def _read_temperature_c(self, handle: Any) -> float:
        # nvmlDeviceGetTemperature is deprecated (gone in CUDA 14); the V form needs a recent driver.
        sensor = getattr(self._nvml, "NVML_TEMPERATURE_GPU", 0)
        if self._use_temperature_v:
            temp_c = self._query("nvmlDeviceGetTemperatureV", handle, sensor)
            if temp_c is not None:
                return float(temp_c)
        temp_c = self._query("nvmlDeviceGetTemperature", handle, sensor)
        if temp_c is None:
            return NAN
        self._use_temperature_v = False
        return float(temp_c)

    def _read_torch(self) -> dict[str, float]:
        try:
            return torch_cuda_mib(self.device_index)
        except Exception as exc:  # torch half-imported by another thread, or a device index torch lacks
            self._log_once(f"torch:{type(exc).__name__}", logging.DEBUG, "torch.cuda stats unavailable: %s", exc)
            return dict.fromkeys(TORCH_COLUMNS, NAN)

    def _read_process(self) -> dict[str, float]:
        now_s = time.monotonic()
        times = os.times()
        cpu_s = times.user + times.system  # all threads of this process, children excluded
        previous, self._last_cpu = self._last_cpu, (now_s, cpu_s)
        cpu_pct = NAN
        if previous is not None and now_s > previous[0]:
            cpu_pct = 100.0 * (cpu_s - previous[1]) / (now_s - previous[0])
        return {"rss_mib": rss_mib(), "cpu_pct": cpu_pct}

    def _read_extra(self, row: dict[str, float]) -> dict[str, float]:
        if self._extra is None:
            return {}
        try:
            values = self._extra()
        except Exception as exc:
            self._log_once(f"extra:{type(exc).__name__}", logging.WARNING, "extra probe failed: %s", exc)
            return {}
        extra: dict[str, float] = {}
        for key, value in values.items():
            if key in row:  # built-in metrics keep their meaning
                continue
            try:
                extra[key] = float(value)
            except (TypeError, ValueError):
                extra[key] = NAN
        return extra

    def _log_once(self, key: str, level: int, message: str, *args: Any, exc_info: bool = False) -> None:
        # A failing metric fails the same way 4 times a second; one line says it.
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, message, *args, exc_info=exc_info)


def window_summary(df: pd.DataFrame) -> dict[str, float]:
    """Peaks and means over a window of samples (a frame with SAMPLE_COLUMNS); NaN where a metric was not available."""
    peak_allocated_mib = _max(df["torch_allocated_mib"])
    # 4 Hz sampling misses short allocation spikes, but torch keeps its own high-water mark: when it
    # changes between two samples inside the window, its new value was reached inside the window.
    peaks = df["torch_peak_mib"].tolist()
    for before, after in zip(peaks, peaks[1:]):
        if not math.isnan(before) and not math.isnan(after) and after != before:
            peak_allocated_mib = after if math.isnan(peak_allocated_mib) else max(peak_allocated_mib, after)
    return {
        "peak_vram_used_mib": _max(df["vram_used_mib"]),
        "peak_torch_allocated_mib": peak_allocated_mib,
        "peak_torch_reserved_mib": _max(df["torch_reserved_mib"]),
        "mean_gpu_util_pct": _mean(df["gpu_util_pct"]),
        "peak_rss_mib": _max(df["rss_mib"]),
        "mean_cpu_pct": _mean(df["cpu_pct"]),
        "n_samples": len(df),
    }


def _device_handle(nvml: Any, cuda_index: int) -> Any:
    """NVML handle for CUDA device `cuda_index`; NVML ignores CUDA_VISIBLE_DEVICES, so apply it here."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        # CUDA numbers fastest-first and NVML by PCI bus; they agree unless the GPUs are mixed models
        # (set CUDA_DEVICE_ORDER=PCI_BUS_ID there).
        return nvml.nvmlDeviceGetHandleByIndex(cuda_index)
    entries = [entry.strip() for entry in visible.split(",") if entry.strip()]
    if cuda_index >= len(entries):
        raise LookupError(f"CUDA_VISIBLE_DEVICES={visible!r} has no device {cuda_index}")
    entry = entries[cuda_index]
    if entry.isdigit():
        return nvml.nvmlDeviceGetHandleByIndex(int(entry))
    try:  # a full GPU-... or MIG-... UUID
        return nvml.nvmlDeviceGetHandleByUUID(entry.encode())
    except Exception:
        pass
    for index in range(nvml.nvmlDeviceGetCount()):  # CUDA also accepts a unique UUID prefix
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = nvml.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        if uuid.startswith(entry) or uuid.startswith("GPU-" + entry):
            return handle
    raise LookupError(f"CUDA_VISIBLE_DEVICES entry {entry!r} matches no GPU")


def _shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception as exc:  # shutting down a lost GPU can fail; nothing useful to do about it
        log.debug("nvmlShutdown failed: %s", exc)


def _own_process_mib(processes: list[Any] | None) -> float:
    """This process's device memory from NVML's process list; NaN when it is not listed."""
    if processes is None:
        return NAN
    pid = os.getpid()
    used = [process.usedGpuMemory for process in processes if process.pid == pid]
    # Not listed: no CUDA context yet, or a container whose PID namespace hides host PIDs from us.
    # usedGpuMemory is None under Windows WDDM. A MIG setup can list one entry per instance: sum them.
    if not used or any(used_bytes is None for used_bytes in used):
        return NAN
    return sum(used) / MIB


def _init_failure_note(nvml: Any, exc: BaseException) -> str:
    no_driver_codes = {
        getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", 12),
        getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", 9),
    }
    if getattr(exc, "value", None) in no_driver_codes or isinstance(exc, OSError):
        return NO_DRIVER_NOTE
    return f"NVML not available ({_describe(exc)}): showing process RSS and CPU instead"


def _describe(exc: BaseException) -> str:
    # NVMLError.__str__ asks the library for unknown codes, which fails when the library is the problem.
    try:
        return str(exc) or type(exc).__name__
    except Exception:
        return f"{type(exc).__name__} {getattr(exc, 'value', '')}".strip()


def _to_frame(rows: list[dict[str, float]]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    columns = list(SAMPLE_COLUMNS) + [column for column in df.columns if column not in SAMPLE_COLUMNS]
    return df.reindex(columns=columns).astype("float64")


def _max(series: pd.Series) -> float:
    return float(series.max()) if len(series) else NAN


def _mean(series: pd.Series) -> float:
    return float(series.mean()) if len(series) else NAN
