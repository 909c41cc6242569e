"""Capacity under a latency target: the search stops at the first concurrency whose p95 misses.

The engine here is tests.fixtures.fake_engine.FakeEngine with a fixed delay per batch: a fake, so that latency grows
with concurrency in a known way and the test takes seconds (the real engine runs in test_compare.py).
"""
from __future__ import annotations

import pandas as pd
import pytest

from app.service import TTSService
from app.settings import BatchSettings
from profiling.capacity import CAPACITY_COLUMNS, capacity_search, check_slo, default_slo_p95_s, level_texts
from profiling.compare import COLUMNS, GridPoint, run_grid
from tests.fixtures.fake_engine import FakeEngine

TEXTS = ["一号。", "二号。", "三号。", "四号。"]
DELAY_S = 0.1  # per batch: at max batch 1, n closed-loop clients wait about n * DELAY_S each


def test_the_search_stops_at_the_first_concurrency_that_misses():
    fake = FakeEngine(delay_s=DELAY_S)
    svc = TTSService(fake, BatchSettings(max_batch_size=1, max_wait_ms=0)).start(warmup=False)
    steps = []
    try:
        row = capacity_search(svc, TEXTS, slo_p95_s=0.3, report=steps.append)
    finally:
        svc.close()
    # 1 client: ~0.1 s, 2: ~0.2 s, both within 0.3 s; 4 clients wait ~0.4 s: the first miss, and nothing after it runs
    assert row["capacity_concurrency"] == 2 and row["capacity_missed_at"] == 4
    assert row["capacity_levels_run"] == "1,2,4" and steps == ["1 clients", "2 clients", "4 clients"]
    assert len(fake.batches) == len(level_texts(TEXTS, 1)) + len(level_texts(TEXTS, 2)) + len(level_texts(TEXTS, 4))
    assert row["capacity_p95_s"] <= 0.3 < row["capacity_missed_p95_s"]
    assert row["capacity_throughput_audio_s_per_s"] > 0 and "p95" in row["capacity_note"]
    assert set(row) == set(CAPACITY_COLUMNS)


def test_a_target_nothing_meets_reports_zero_and_a_budget_stops_the_search():
    svc = TTSService(FakeEngine(delay_s=DELAY_S), BatchSettings(max_batch_size=1, max_wait_ms=0)).start(warmup=False)
    try:
        none = capacity_search(svc, TEXTS, slo_p95_s=0.01)
        budget = capacity_search(svc, TEXTS, slo_p95_s=60, budget_s=0.0)
    finally:
        svc.close()
    assert none["capacity_concurrency"] == 0 and none["capacity_missed_at"] == 1 and none["capacity_levels_run"] == "1"
    assert budget["capacity_levels_run"] == "1" and "time budget" in budget["capacity_note"]


def test_each_level_sends_at_least_two_requests_per_client():
    assert level_texts(TEXTS, 1) == TEXTS and len(level_texts(TEXTS, 16)) == 32
    assert level_texts(TEXTS, 8)[4:8] == TEXTS


def test_the_target_is_checked_and_defaults_by_device():
    assert default_slo_p95_s("cuda:0") == 1.0 and default_slo_p95_s("cpu") == 30.0
    for bad in (0, -1, float("nan"), "1"):
        with pytest.raises(ValueError, match="p95 latency target"):
            check_slo(bad)


def test_the_grid_carries_capacity_columns_with_the_same_progress(tmp_path):
    svc = TTSService(FakeEngine(delay_s=0.05), BatchSettings(max_batch_size=4, max_wait_ms=5)).start(warmup=False)
    seen = []
    try:
        df = run_grid(svc, None, [GridPoint(False, 1, False), GridPoint(False, 4, False)], TEXTS, concurrency=2,
                      progress=lambda i, n, label: seen.append((i, label)), quality_texts=0, slo_p95_s=0.12)
    finally:
        svc.close()
    assert list(df.columns) == COLUMNS
    assert (df["slo_p95_s"] == 0.12).all() and df["capacity_levels_run"].str.startswith("1").all()
    # batching lets max batch 4 serve more clients within the same target than max batch 1
    assert df.iloc[1]["capacity_concurrency"] > df.iloc[0]["capacity_concurrency"]
    assert any("capacity, 1 clients" in label for _, label in seen) and seen[-1] == (2, "done")
    df.to_csv(tmp_path / "c.csv", index=False)
    assert list(pd.read_csv(tmp_path / "c.csv").columns) == COLUMNS
