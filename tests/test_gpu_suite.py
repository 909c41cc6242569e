"""The GPU suite kept from rotting on CPU: gpu_prepare.sh, then the suite's own entry point as a dry run.

The dry run is `bash profiling/bench/gpu_suite.sh --dry-run`: the CUDA sections are skipped, saying why, and the
others (preflight: every module the CUDA sections import, imported with the bare box's missing packages blocked;
goals) run for real. The CUDA sections' command lines are parsed by their own modules' parsers here, so a renamed
flag fails CI rather than the one GPU run.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from profiling.bench import gpu_suite

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], timeout_s: float = 300, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PY": sys.executable, **env}, capture_output=True, text=True,
                          timeout=timeout_s)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """gpu_prepare.sh on a cache that also holds an ONNX export (17 MiB; a user who tried --runtime onnxruntime has
    one): only the converted weights are carried, within the 48 MiB."""
    from app.engines.embedded.weights import default_cache_dir, load_weights

    load_weights()
    cache = tmp_path_factory.mktemp("cache")
    (cache / "embedded" / "onnx").mkdir(parents=True)
    for f in default_cache_dir().iterdir():
        if f.is_file():
            (cache / "embedded" / f.name).symlink_to(f)
    (cache / "embedded" / "onnx" / "embedded-melgan-fp32.onnx").write_bytes(bytes(17 << 20))
    gpu = tmp_path_factory.mktemp("gpu")
    done = run(["bash", "profiling/bench/gpu_prepare.sh"], GPU_DIR=str(gpu), TTS_CACHE_DIR=str(cache))  # no pytest needed
    assert done.returncode == 0 and "ready" in done.stdout, done.stdout + done.stderr
    assert not (gpu / "cache" / "embedded" / "onnx").exists()
    return gpu


def sections(out: Path) -> dict[str, dict]:
    with open(out / "sections.csv", encoding="utf8") as f:
        return {row["section"]: row for row in csv.DictReader(f)}


def test_dry_run_skips_the_cuda_sections_saying_why_and_runs_the_rest(prepared, tmp_path):
    out = tmp_path / "out"
    done = run(["bash", "profiling/bench/gpu_suite.sh", "--dry-run"], OUT=str(out), GPU_DIR=str(prepared))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    table = sections(out)
    assert list(table) == [s.name for s in gpu_suite.SECTIONS]
    for s in gpu_suite.SECTIONS:
        if s.cuda:
            assert table[s.name]["result"] == "skipped" and table[s.name]["why"] == "dry run: --dry-run", table[s.name]
        else:
            assert table[s.name]["result"] == "passed", table[s.name]
    n = len(__import__("profiling.bench.gpu_preflight", fromlist=["x"]).SECTION_IMPORTS)
    assert f"imported {n} of {n} section modules" in done.stdout and "preflight: ready" in done.stdout
    assert "GPU suite summary" in done.stdout and "no section failed" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["goals.csv", "gpu_suite.log", "sections.csv"]
    assert "not measured" in (out / "goals.csv").read_text(encoding="utf8")


def test_a_failing_section_fails_the_suite_and_the_rest_still_run(tmp_path):
    out, empty = tmp_path / "out", tmp_path / "not-prepared"
    empty.mkdir()
    done = run(["bash", "profiling/bench/gpu_suite.sh", "--dry-run", "preflight", "goals"], OUT=str(out), GPU_DIR=str(empty))
    assert done.returncode == 1
    table = sections(out)
    why = table["preflight"]["why"]
    assert table["preflight"]["result"] == "failed" and "problem(s)" in why and "acoustic.safetensors is missing" in why
    assert table["goals"]["result"] == "passed"
    assert "1 section(s) failed: preflight" in done.stdout


def test_a_section_past_its_budget_is_killed_and_counted_as_failed(tmp_path):
    (tmp_path / "sleepy.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    section = gpu_suite.Section("sleepy", 2, False, "sleepy", (), (), "sleeps past its budget")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    with open(tmp_path / "log", "w") as log:
        outcome = gpu_suite.run_section(section, 2, env, tmp_path, tmp_path, log)
    assert outcome.result == "timeout" and outcome.seconds < 15 and "budget of 2 s" in outcome.why
    assert "started" in (tmp_path / "log").read_text()


def test_the_bare_box_blocker_refuses_what_the_gpu_box_lacks():
    done = run([sys.executable, "-m", "profiling.bench.bare", "app.web.handlers"], timeout_s=120)
    assert done.returncode != 0 and "the bare GPU box has no gradio" in done.stderr


class Parsed(Exception):
    pass


@pytest.mark.parametrize("section", [s for s in gpu_suite.SECTIONS if s.cuda], ids=lambda s: s.name)
def test_every_cuda_section_command_is_accepted_by_its_module(section, monkeypatch, tmp_path):
    args = [a.replace("{out}", str(tmp_path)).replace("{gpu}", str(tmp_path)) for a in section.args]
    if section.module == "pytest":
        assert all((ROOT / a).is_file() for a in args if a.startswith("tests/")), args
        return
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):  # unknown flags and bad values exit 2 here, as they would there
        raise Parsed(parse(self, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed):
        importlib.import_module(section.module).main(args)


def test_the_budgets_fit_one_device_call_and_the_files_come_back():
    assert sum(s.budget_s for s in gpu_suite.SECTIONS) <= gpu_suite.SUITE_LIMIT_S <= 8 * 60
    assert len({f for s in gpu_suite.SECTIONS for f in s.writes}) + 2 <= gpu_suite.FILES_BACK  # + the log and sections.csv


def test_goals_read_the_sections_csvs(tmp_path):
    from profiling.bench.gpu_goals import goals

    rows = [{"asked": a, "precision": a, "decoder": d, "batch": b, "throughput_audio_s_per_s": t, "status": "ok"}
            for a, d, b, t in (("fp32", "graphs", 1, 40.0), ("fp16", "graphs", 1, 60.0), ("fp16/bf16", "graphs", 1, 90.0),
                               ("fp16", "dynamic", 1, 20.0), ("fp32", "graphs", 32, 500.0), ("fp16", "graphs", 32, 600.0))]
    pd.DataFrame(rows).to_csv(tmp_path / "engine.csv", index=False)
    pd.DataFrame([{"kind": "load", "precision": "fp16 (vocoder fp32)", "cuda_graphs": True, "clients": 8, "p95_latency_s": 0.2,
                   "p50_latency_s": 0.1, "mean_gpu_util_pct": 75.0, "status": float("nan")}]).to_csv(tmp_path / "service.csv", index=False)
    pd.DataFrame([{"check": "start-up (embedded, fp16 + graphs): self-check within a few seconds", "result": "PASS",
                   "value": 1.5, "capture_s": 2.0, "graphs": 28},
                  {"check": "self-check embedded fp16: graphs", "result": "PASS"},
                  {"check": "self-check embedded fp16/fp16: fp16 vocoder", "result": "NOTE"}]).to_csv(tmp_path / "correctness.csv", index=False)
    table = {g.goal: g for g in goals(tmp_path)}
    assert table["embedded batch 1 throughput (audio s/s)"].measured == 60.0  # fp16, not fp16/bf16
    assert table["embedded batch 1 throughput (audio s/s)"].met == "yes"
    assert table["embedded FP16 / FP32 with graphs, batch 32"].measured == pytest.approx(1.2)
    assert table["embedded FP16 / FP32 with graphs, batch 32"].met == "NO"
    assert table["embedded graphs / dynamic, fp16, batch 1"].measured == 3.0
    assert table["service p95 latency, 8 clients (s)"].met == "NO" and table["service GPU utilisation, 8 clients (%)"].met == "yes"
    assert table["start-up self-check time, embedded (s)"].met == "yes"
    assert table["self-check verdicts failed at the shipped settings"].measured == 0  # the NOTE is a table on trial
    assert table["sambert batch 1 throughput (audio s/s)"].met == "not measured"
