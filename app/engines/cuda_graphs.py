"""CUDA graphs for the static decoder steps: one captured graph per shape bucket, replayed with its buffers.

Both autoregressive decoders (embedded Tacotron2, Sambert PNCA) decode in fixed-shape chunks of steps whose every
input, state and output lives in preallocated buffers. On CUDA each bucket's chunk is captured once and replayed,
which turns hundreds of small kernel launches per step into one launch per chunk. Elsewhere (CPU, or a test) the same
chunk runs eagerly, so the static path is the same code with or without capture.

Rules followed (PyTorch's "CUDA Graphs" notes): warm up on a side stream before capturing; inside a captured step no
host sync, no tensor made from Python data, no data-dependent Python control flow. Every tensor that lives across
replays is taken from an `Arena` outside capture and written in place, so a graph's private pool only ever holds
temporaries: all graphs can share one pool and replay in any order, one at a time.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # a batch is padded up to the next of these (padding rows are masked)
WARMUP_RUNS = 2  # eager runs on a side stream before capture: lazy cuBLAS/cuDNN set-up must not happen in capture

Step = Callable[[], None]


def bucket_for(n: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket that holds n, or None when n is larger than every bucket."""
    return next((b for b in buckets if b >= n), None)


def pick_bucket(n: int, length: int, batch_buckets: tuple[int, ...], length_buckets: tuple[int, ...]) -> tuple[int, int] | None:
    """(batch bucket, length bucket) for n items padded to `length`, or None when either is beyond its largest bucket
    (such a batch decodes with the dynamic loop)."""
    batch, span = bucket_for(n, batch_buckets), bucket_for(length, length_buckets)
    return None if batch is None or span is None else (batch, span)


def capture_possible(device: str) -> bool:
    """Whether graphs can be captured on this device (CUDA only)."""
    return device.startswith("cuda") and torch.cuda.is_available()


def warm_up(step: Step) -> None:
    """Run `step` WARMUP_RUNS times on a side stream (CUDA): lazy cuBLAS/cuDNN set-up must not happen in capture.

    These runs execute for real and change the step's buffers: GraphSet.add resets the bucket before and after them.
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_RUNS):
            step()
    torch.cuda.current_stream().wait_stream(side)


def capture(step: Step, pool) -> tuple[Step, object]:
    """Record one run of `step` as a CUDA graph (recording executes nothing); return its replay and memory pool.

    pool: None for the first graph (it gets a private pool), then the pool returned before, so all graphs share one.
    """
    graph = torch.cuda.CUDAGraph()
    # thread_local: only the capturing thread (the batch worker) is restricted; the monitor thread may keep sampling.
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        step()
    return graph.replay, graph.pool()


class Arena:
    """Named flat buffers shared by every bucket: a bucket's tensor is a contiguous view of a buffer's first elements.

    Memory is that of the largest bucket only. A buffer is created by its first (largest) `take` and never grows after,
    because captured graphs hold its address: take the largest bucket first.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self._flat: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        numel = math.prod(shape)
        flat = self._flat.get(name)
        if flat is None:
            flat = self._flat[name] = torch.zeros(numel, dtype=dtype, device=self.device)
        elif flat.dtype != dtype or flat.numel() < numel:
            raise ValueError(f"arena buffer {name!r} holds {flat.numel()} {flat.dtype}; {shape} {dtype} does not fit "
                             "(take the largest bucket first)")
        return flat[:numel].view(shape)

    def __getitem__(self, name: str) -> torch.Tensor:
        """The whole flat buffer `name` (every bucket's view of it starts at its first element)."""
        return self._flat[name]

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._flat.values())


class GraphSet:
    """One runner per bucket key: a captured graph's replay on CUDA, the eager step elsewhere; memory accounted."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.captured = capture_possible(device)
        self.arena = Arena(device)
        self._pool = None  # the first capture's private pool, shared by the later ones
        self._runners: dict[tuple, Step] = {}
        # Device memory is read as the allocator's reserved bytes with its cache emptied (torch.cuda.graph empties it
        # too): what the arena and the graphs' private pool hold, and nothing else can use, since this set began.
        self._base_bytes = _held_bytes() if self.captured else 0
        self._graph_bytes = 0
        self.capture_s = 0.0  # wall time spent warming up and capturing, all buckets (0 without capture)
        self.replays = 0  # runs of any bucket since the set was built (the self-check reads it to know replay ran)

    def add(self, key: tuple, step: Step, reset: Step) -> None:
        """Register the step of one bucket; on CUDA warm it up and capture it now (raises what capture raises, e.g. OOM).

        reset: puts the bucket's state (step index, caches, previous frame, flags) back to its start. Buckets share the
        arena, and the warm-ups really run, so without it one bucket's warm-ups would start where the last one's ended
        (Sambert's step index then indexed past its buffer). It runs before the warm-ups and again before capture.
        """
        if not self.captured:
            self._runners[key] = step
            return
        t0 = time.monotonic()
        reset()
        warm_up(step)
        reset()
        self._runners[key], self._pool = capture(step, self._pool)
        self._graph_bytes = _held_bytes() - self._base_bytes
        self.capture_s += time.monotonic() - t0

    def run(self, key: tuple) -> None:
        self.replays += 1
        self._runners[key]()

    def __contains__(self, key: tuple) -> bool:
        return key in self._runners

    def __len__(self) -> int:
        return len(self._runners)

    @property
    def memory_mib(self) -> float:
        """Device memory the static path holds: its buffers plus the graphs' private pool."""
        return max(self.arena.bytes, self._graph_bytes) / 2**20

    def describe(self) -> str:
        what = (f"{len(self)} CUDA graphs captured in {self.capture_s:.1f} s" if self.captured
                else f"{len(self)} static shapes (no capture)")
        return f"{what}, {self.memory_mib:.0f} MiB"


def _held_bytes() -> int:
    if not torch.cuda.is_available():
        return 0
    torch.cuda.empty_cache()
    return torch.cuda.memory_reserved()
