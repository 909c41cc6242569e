"""The GPU self-check's verdicts: captured replay vs the dynamic loop, each half-precision module vs FP32.

EngineBase runs the checks on the device itself, right after graphs are captured and right after a precision change
(start-up, a toggle, a recapture), on the self-check items (the warm-up sentence in a few voices). This module holds
only the pure comparisons and the verdicts as plain data (numpy, no torch), so they are tested without a model.
A check that fails turns its feature off for that engine (graphs -> the dynamic loop; a half module -> FP32) with a
note naming what differed and by how much; /health lists every verdict under `gpu_self_check`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"

# Graphs: the most an item's mean |mel difference| (log-mel, natural log; mels span about -12..2) may be between the
# captured replay and the dynamic loop on the same items, seeds and precision, by the precision of the mel-making
# module; frame counts and stop flags must be equal. The two paths run other matmul shapes (buckets pad batch and
# length; the dynamic loop drops finished items), so rounding differs and can grow through the autoregression. Measured
# on CPU, the embedded self-check items: FP32 <= 1e-4 (largest single difference 4e-3); FP16 <= 0.033 (largest single
# difference 0.8, in a few frames where the two paths drifted apart). Two renderings of the same sentence with other
# dropout seeds differ by 0.36-0.68, and a stale buffer, a missed copy or mask or a wrong dtype by as much or more, or
# in length. The mean, not the largest difference, is judged: a drift of a few frames is rounding, not a wrong replay.
GRAPH_MEL_TOLERANCE = {"fp32": 0.02, "fp16": 0.15, "bf16": 0.25}
# Half precision, the mel-making module: the most share of self-check items whose frame count may change against FP32
# (a stop gate near its threshold may fire a frame earlier or later; an overflow changes most lengths or never stops).
HALF_FRAMES_CHANGED_MAX = 0.5
# Half precision, the vocoder (its sample count is fixed by the mel): the largest relative error of an item's waveform
# against FP32 on the same FP32 mel, ||half - fp32|| / ||fp32||. An overflow saturated by a final tanh stays finite,
# so finiteness alone would not catch it; rounding alone stays far below this.
HALF_VOCODER_REL_ERROR_MAX = 0.5


@dataclass(frozen=True)
class Decoded:
    """One self-check item's acoustic output."""

    mel: np.ndarray  # (frames, bands) float32
    stopped: bool  # whether its stop gate fired (True for engines without a gate)


@dataclass(frozen=True)
class Verdict:
    """One check's outcome, as /health shows it."""

    status: str  # PASSED, FAILED or SKIPPED
    detail: str  # what was compared and what differed by how much, or why it was skipped
    difference: float | None = None  # the measured figure the tolerance applies to (None: nothing measured)
    tolerance: float | None = None  # the most that figure may be and still pass
    seconds: float = 0.0  # how long the check took

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def as_dict(self) -> dict:
        return {"status": self.status, "difference": self.difference, "tolerance": self.tolerance,
                "detail": self.detail, "seconds": round(self.seconds, 3)}


def skipped(why: str) -> Verdict:
    return Verdict(SKIPPED, why)


def failed(why: str, seconds: float = 0.0) -> Verdict:
    return Verdict(FAILED, why, seconds=seconds)


def compare_replay(replay: Sequence[Decoded], dynamic: Sequence[Decoded], precision: str) -> Verdict:
    """Replay vs the dynamic loop: equal frame counts and stop flags, finite, mel within GRAPH_MEL_TOLERANCE[precision]."""
    tolerance = GRAPH_MEL_TOLERANCE[precision]
    n = len(dynamic)
    if len(replay) != n:
        return Verdict(FAILED, f"replay gave {len(replay)} items for {n}", tolerance=tolerance)
    lengths = [i for i, (r, d) in enumerate(zip(replay, dynamic)) if r.mel.shape != d.mel.shape]
    if lengths:
        i = lengths[0]
        return Verdict(FAILED, f"frame counts differ on {len(lengths)} of {n} items (item {i}: replay "
                       f"{replay[i].mel.shape[0]}, dynamic {dynamic[i].mel.shape[0]})", tolerance=tolerance)
    flags = [i for i, (r, d) in enumerate(zip(replay, dynamic)) if r.stopped != d.stopped]
    if flags:
        i = flags[0]
        return Verdict(FAILED, f"stop flags differ on {len(flags)} of {n} items (item {i}: replay {replay[i].stopped}, "
                       f"dynamic {dynamic[i].stopped})", tolerance=tolerance)
    bad = [i for i, r in enumerate(replay) if not np.isfinite(r.mel).all()]
    if bad:
        return Verdict(FAILED, f"replay mel has non-finite values on {len(bad)} of {n} items", tolerance=tolerance)
    diffs = [np.abs(r.mel - d.mel) if r.mel.size else np.zeros(1) for r, d in zip(replay, dynamic)]
    means = [float(x.mean()) for x in diffs]
    worst, item = max(means, default=0.0), int(np.argmax(means)) if means else 0
    largest = max((float(x.max()) for x in diffs), default=0.0)
    status = PASSED if worst <= tolerance else FAILED
    return Verdict(status, f"{precision}: {n} items, same frame counts and stop flags; mean |mel diff| {worst:.2e} at most "
                   f"(item {item}; largest single difference {largest:.2g}), tolerance {tolerance:g}", worst, tolerance)


def compare_half_mels(precision: str, half: Sequence[Decoded], reference: Sequence[Decoded]) -> Verdict:
    """The mel-making module in half precision vs FP32: finite, frame counts changed on at most HALF_FRAMES_CHANGED_MAX."""
    n = len(reference)
    bad = [i for i, h in enumerate(half) if not np.isfinite(h.mel).all()]
    changed = [i for i, (h, r) in enumerate(zip(half, reference)) if h.mel.shape[0] != r.mel.shape[0]]
    share = len(changed) / n if n else 0.0
    if bad:
        return Verdict(FAILED, f"{precision} mel has non-finite values on {len(bad)} of {n} items", share, HALF_FRAMES_CHANGED_MAX)
    frames = ", ".join(f"item {i}: {reference[i].mel.shape[0]} -> {half[i].mel.shape[0]}" for i in changed[:3])
    status = PASSED if share <= HALF_FRAMES_CHANGED_MAX else FAILED
    return Verdict(status, f"{precision} vs fp32: frame counts changed on {len(changed)} of {n} items"
                   + (f" ({frames})" if frames else ""), share, HALF_FRAMES_CHANGED_MAX)


def compare_half_waves(precision: str, half: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> Verdict:
    """The vocoder in half precision vs FP32 on the same FP32 mels: finite, relative error at most HALF_VOCODER_REL_ERROR_MAX."""
    n = len(reference)
    bad = [i for i, h in enumerate(half) if not np.isfinite(h).all()]
    if bad:
        return Verdict(FAILED, f"{precision} waveform has non-finite samples on {len(bad)} of {n} items", None,
                       HALF_VOCODER_REL_ERROR_MAX)
    errors = [float(np.linalg.norm(h[: len(r)] - r) / max(float(np.linalg.norm(r)), 1e-9)) for h, r in zip(half, reference)]
    worst = max(errors, default=0.0)
    status = PASSED if worst <= HALF_VOCODER_REL_ERROR_MAX else FAILED
    return Verdict(status, f"{precision} vs fp32 on the same mels: largest relative waveform error {worst:.3f} over {n} items",
                   worst, HALF_VOCODER_REL_ERROR_MAX)


STATUS_RANK = {FAILED: 2, PASSED: 1, SKIPPED: 0}


def merge(reports: Iterable[dict]) -> dict:
    """Several engines' `gpu_self_check` (the replicas') as one: per check, the worst entry (failed over passed over
    skipped), so the front shows a failure on any replica."""
    out: dict = {}
    for report in reports:
        for name, entry in (report or {}).items():
            if "status" not in entry:  # a group, e.g. {"fp16": {"acoustic": {...}, "vocoder": {...}}}
                out[name] = merge([out.get(name, {}), entry])
            elif name not in out or STATUS_RANK[entry["status"]] > STATUS_RANK[out[name]["status"]]:
                out[name] = entry
    return out


def failures(report: dict, prefix: str = "") -> list[str]:
    """The names of a `gpu_self_check` report's failed checks, e.g. ["graphs", "fp16 vocoder"]."""
    names = []
    for name, entry in report.items():
        if "status" not in entry:
            names += failures(entry, f"{prefix}{name} ")
        elif entry["status"] == FAILED:
            names.append(f"{prefix}{name}")
    return names
