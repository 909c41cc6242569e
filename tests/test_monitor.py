"""Monitor: never raises, degrades without NVML, maps NVML and torch readings, bounded and threaded."""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from profiling.monitor import NO_DRIVER_NOTE, NVML_COLUMNS, SAMPLE_COLUMNS, TORCH_COLUMNS, Monitor

MIB = 1024 * 1024
GIB = 1024 * MIB


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError: carries an NVML return code in .value."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 12: "NVML Shared Library Not Found"}.get(self.value, f"error {self.value}")


class FakeNVML:
    """A FAKE standing in for the pynvml module and the NVIDIA driver behind it (there is no GPU here)."""

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, init_error: int | None = None, failing: tuple[str, ...] = ()) -> None:
        self.init_error = init_error  # NVML return code nvmlInit fails with, if any
        self.failing = set(failing)  # functions that raise NVMLError(Not Supported)
        self.used_bytes = 3 * GIB
        self.total_bytes = 80 * GIB
        self.gpu_pct = 57
        self.memory_pct = 23
        self.power_mw = 123_456
        self.temp_c = 64
        self.processes = [
            SimpleNamespace(pid=os.getpid() + 100_000, usedGpuMemory=5 * GIB),  # someone else's job
            SimpleNamespace(pid=os.getpid(), usedGpuMemory=1536 * MIB),
        ]
        self.opened_index: int | None = None
        self.shutdowns = 0

    def _check(self, name: str) -> None:
        if name in self.failing:
            raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[str, int]:
        self.opened_index = index
        return ("handle", index)

    def nvmlDeviceGetName(self, handle: object) -> str:
        return "Fake GPU 80GB"

    def nvmlDeviceGetMemoryInfo(self, handle: object, version: int | None = None) -> SimpleNamespace:
        self._check("nvmlDeviceGetMemoryInfo")
        return SimpleNamespace(total=self.total_bytes, used=self.used_bytes, free=self.total_bytes - self.used_bytes)

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> SimpleNamespace:
        self._check("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=self.gpu_pct, memory=self.memory_pct)

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        self._check("nvmlDeviceGetPowerUsage")
        return self.power_mw

    def nvmlDeviceGetTemperature(self, handle: object, sensor: int) -> int:
        self._check("nvmlDeviceGetTemperature")
        return self.temp_c

    def nvmlDeviceGetComputeRunningProcesses(self, handle: object) -> list[SimpleNamespace]:
        self._check("nvmlDeviceGetComputeRunningProcesses")
        return list(self.processes)


class FakeCuda:
    """Stands in for torch.cuda: allocator counters in bytes, and whether CUDA was initialised."""

    def __init__(self, initialized: bool) -> None:
        self.initialized = initialized
        self.allocated_bytes = 100 * MIB
        self.reserved_bytes = 256 * MIB
        self.peak_bytes = 100 * MIB
        self.stat_calls = 0

    def is_initialized(self) -> bool:
        return self.initialized

    def memory_allocated(self, device: int) -> int:
        self.stat_calls += 1
        return self.allocated_bytes

    def memory_reserved(self, device: int) -> int:
        self.stat_calls += 1
        return self.reserved_bytes

    def max_memory_allocated(self, device: int) -> int:
        self.stat_calls += 1
        return self.peak_bytes


@pytest.fixture(autouse=True)
def _all_devices_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def _is_nan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


# -- without a GPU --------------------------------------------------------------------------------


def test_no_driver_gives_note_and_nan_gpu_fields_but_process_metrics() -> None:
    monitor = Monitor(nvml=FakeNVML(init_error=FakeNVML.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert monitor.note == NO_DRIVER_NOTE
    assert not monitor.gpu_available
    assert "CPU" in monitor.device_name
    first, second = monitor.sample_once(), monitor.sample_once()
    assert all(_is_nan(second[column]) for column in NVML_COLUMNS)
    assert set(SAMPLE_COLUMNS) <= set(second)
    if sys.platform.startswith("linux"):
        assert second["rss_mib"] > 1
    assert _is_nan(first["cpu_pct"])  # no previous sample to take a CPU-time delta from
    assert second["cpu_pct"] >= 0


def test_missing_pynvml_package_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    monitor = Monitor()
    assert "not installed" in monitor.note
    assert _is_nan(monitor.sample_once()["vram_used_mib"])


def test_real_pynvml_on_this_machine_never_raises() -> None:
    monitor = Monitor()
    before = time.time()
    sample = monitor.sample_once()
    assert before - 1 <= sample["t"] <= time.time() and set(SAMPLE_COLUMNS) <= set(sample)
    assert 10 < sample["rss_mib"] < 1e6  # this very process, read from /proc
    if monitor.gpu_available:  # a real driver: the device is really read
        assert 0 < sample["vram_used_mib"] <= sample["vram_total_mib"] and monitor.note is None
    else:  # the usual case here: no NVIDIA driver
        assert monitor.note and "NVML not available" in monitor.note
        assert _is_nan(sample["vram_total_mib"])


# -- with a fake driver ---------------------------------------------------------------------------


def test_fake_driver_fields_map_with_units() -> None:
    monitor = Monitor(nvml=FakeNVML())
    assert monitor.gpu_available and monitor.note is None
    assert monitor.device_name == "Fake GPU 80GB"
    sample = monitor.sample_once()
    assert sample["vram_used_mib"] == 3072.0
    assert sample["vram_total_mib"] == 81920.0
    assert sample["gpu_util_pct"] == 57.0
    assert sample["mem_util_pct"] == 23.0
    assert sample["power_w"] == pytest.approx(123.456)
    assert sample["temp_c"] == 64.0
    assert sample["proc_vram_mib"] == 1536.0  # only the entry whose pid is os.getpid()


def test_one_failing_metric_is_nan_for_that_metric_only() -> None:
    sample = Monitor(nvml=FakeNVML(failing=("nvmlDeviceGetPowerUsage",))).sample_once()
    assert _is_nan(sample["power_w"])
    assert sample["vram_used_mib"] == 3072.0 and sample["temp_c"] == 64.0 and sample["gpu_util_pct"] == 57.0


def test_process_not_in_nvml_list_is_nan() -> None:
    fake = FakeNVML()
    fake.processes = fake.processes[:1]  # only another process's entry
    assert _is_nan(Monitor(nvml=fake).sample_once()["proc_vram_mib"])


def test_memory_info_v2_falls_back_to_v1_on_an_older_driver() -> None:
    fake = FakeNVML()
    fake.nvmlMemory_v2 = 0x02000028
    v1 = fake.nvmlDeviceGetMemoryInfo

    def memory_info(handle: object, version: int | None = None) -> SimpleNamespace:
        if version is not None:
            raise FakeNVMLError(13)  # Function Not Found
        return v1(handle)

    fake.nvmlDeviceGetMemoryInfo = memory_info
    monitor = Monitor(nvml=fake)
    assert [monitor.sample_once()["vram_used_mib"] for _ in range(2)] == [3072.0, 3072.0]


def test_cuda_visible_devices_picks_the_nvml_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    fake = FakeNVML()
    Monitor(device_index=0, nvml=fake)
    assert fake.opened_index == 3  # NVML ignores CUDA_VISIBLE_DEVICES; torch's cuda:0 is NVML's 3


def test_unknown_visible_device_is_a_note_and_releases_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    fake = FakeNVML()
    monitor = Monitor(device_index=1, nvml=fake)
    assert not monitor.gpu_available and "CUDA device 1" in monitor.note
    assert fake.shutdowns == 1
    assert _is_nan(monitor.sample_once()["vram_used_mib"])


def test_close_shuts_nvml_down_once() -> None:
    fake = FakeNVML()
    with Monitor(interval_s=0.05, nvml=fake) as monitor:
        monitor.sample_once()
    assert fake.shutdowns == 1 and not monitor.gpu_available
    assert _is_nan(monitor.sample_once()["vram_used_mib"])


# -- torch allocator ------------------------------------------------------------------------------


def test_torch_fields_nan_and_cuda_untouched_when_not_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(initialized=False)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    sample = Monitor(nvml=FakeNVML()).sample_once()
    assert all(_is_nan(sample[column]) for column in TORCH_COLUMNS)
    assert cuda.stat_calls == 0


def test_torch_fields_read_when_cuda_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=FakeCuda(initialized=True)))
    sample = Monitor(nvml=FakeNVML()).sample_once()
    assert (sample["torch_allocated_mib"], sample["torch_reserved_mib"], sample["torch_peak_mib"]) == (100, 256, 100)


# -- buffer, window, thread -----------------------------------------------------------------------


def test_buffer_is_bounded_and_keeps_the_newest() -> None:
    monitor = Monitor(capacity=5, nvml=FakeNVML())
    samples = [monitor.sample_once() for _ in range(12)]
    df = monitor.frame()
    assert len(df) == 5
    assert df["t"].tolist() == [sample["t"] for sample in samples[-5:]]
    assert len(monitor.frame(since=samples[-3]["t"])) == 2  # strictly after: incremental polls don't repeat rows


def test_empty_frame_has_the_standard_columns() -> None:
    df = Monitor(nvml=FakeNVML()).frame()
    assert df.empty and list(df.columns) == list(SAMPLE_COLUMNS)


def test_summary_over_a_window() -> None:
    fake = FakeNVML()
    monitor = Monitor(nvml=fake)
    samples = []
    for used_mib, gpu_pct in ((1000, 10), (3000, 50), (2000, 30)):
        fake.used_bytes, fake.gpu_pct = used_mib * MIB, gpu_pct
        samples.append(monitor.sample_once())
    first_two = monitor.summary(samples[0]["t"], samples[1]["t"])
    assert first_two["peak_vram_used_mib"] == 3000.0
    assert first_two["mean_gpu_util_pct"] == 30.0
    assert first_two["n_samples"] == 2
    assert monitor.summary(samples[2]["t"], samples[2]["t"])["peak_vram_used_mib"] == 2000.0
    assert _is_nan(first_two["peak_torch_allocated_mib"])  # no torch CUDA here: not available, not zero
    empty = monitor.summary(0.0, 1.0)
    assert empty["n_samples"] == 0 and all(_is_nan(v) for k, v in empty.items() if k != "n_samples")


def test_summary_catches_an_allocation_spike_between_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = FakeCuda(initialized=True)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    monitor = Monitor(nvml=FakeNVML())
    start = monitor.sample_once()
    cuda.peak_bytes = 900 * MIB  # a batch peaked at 900 MiB and freed it before the next sample
    cuda.allocated_bytes = 150 * MIB
    end = monitor.sample_once()
    assert monitor.summary(start["t"], end["t"])["peak_torch_allocated_mib"] == 900.0


def test_extra_probe_adds_columns_and_a_failing_probe_does_not_raise() -> None:
    monitor = Monitor(nvml=FakeNVML(), extra=lambda: {"queue_depth": 4, "t": -1.0})
    sample = monitor.sample_once()
    assert sample["queue_depth"] == 4.0 and sample["t"] > 0  # built-in columns are not overwritten
    assert "queue_depth" in monitor.frame().columns

    def broken() -> dict[str, float]:
        raise RuntimeError("service gone")

    assert "queue_depth" not in Monitor(nvml=FakeNVML(), extra=broken).sample_once()


def test_thread_samples_in_background_and_stops() -> None:
    monitor = Monitor(interval_s=0.02, nvml=FakeNVML()).start()
    deadline_s = time.monotonic() + 3.0
    while len(monitor.frame()) < 3 and time.monotonic() < deadline_s:
        time.sleep(0.02)
    monitor.stop()
    count = len(monitor.frame())
    assert count >= 3
    assert not any(thread.name == "profiling-monitor" for thread in threading.enumerate())
    time.sleep(0.06)
    assert len(monitor.frame()) == count
    monitor.start().stop()  # restartable


def test_invalid_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="interval_s=0"):
        Monitor(interval_s=0, nvml=FakeNVML())
    with pytest.raises(ValueError, match="capacity=0"):
        Monitor(capacity=0, nvml=FakeNVML())
