"""The start-up GPU self-check as a user's start-up runs it, timed, with every verdict (the correctness section's first
checks; gpu_checks.py runs them and records each as a row of correctness.csv).

Embedded: load on CUDA with FP16 (the half check runs), start the service with CUDA graphs (capture, then the replay
check), then the other precisions a user can switch to. Sambert: a real-size random-weight folder through the
SambertEngine with its frontend read from the prepared symbols (the box has no jieba), the same steps.
"""
from __future__ import annotations

import functools
import tempfile
import time

EMBEDDED_HALF_TABLES = (("bf16", "fp32"), ("fp16", "fp16"), ("fp16", "bf16"))  # (acoustic, vocoder) after the default
SAMBERT_HALF_TABLES = (("bf16", "bf16"),)  # (decoder, vocoder) after the default (fp16, fp16)


def record_verdicts(check, engine, label: str, shipped: bool) -> None:
    """One row per self-check entry: PASS (passed), SKIP (skipped, with why), and for a failed check FAIL where it is
    a setting the app ships (its default tables, FP32) or NOTE where it is a table on trial: there the self-check
    turning a module or the graphs off is the finding, and the app did the right thing."""
    report = engine.gpu_self_check
    entries = [("graphs", report["graphs"])] + [(f"fp16 {m}", e) for m, e in report["fp16"].items()]
    for name, entry in entries:
        result = {"passed": "PASS", "failed": "FAIL" if shipped else "NOTE", "skipped": "SKIP"}[entry["status"]]
        check(f"self-check {label}: {name}", result, entry["detail"], seconds=entry["seconds"], value=entry["difference"],
              tolerance=entry["tolerance"])


def startup_embedded(check, symbols: str | None, device: str = "cuda") -> None:
    """The app's own start-up on CUDA: load (FP16: half check), TTSService start (graphs: capture + replay check)."""
    from app.engines.embedded.engine import EmbeddedEngine
    from app.engines.embedded.frontend import precomputed_frontend
    from app.service import TTSService
    from app.settings import BatchSettings

    t0 = time.monotonic()
    engine = EmbeddedEngine(frontend=precomputed_frontend(symbols) if symbols else None)
    engine.load(device, fp16=True)
    load_s = time.monotonic() - t0
    svc = TTSService(engine, BatchSettings(fp16=True, cuda_graphs=True)).start(warmup=False)
    start_s = time.monotonic() - t0 - load_s
    try:
        capture = engine.graphs_capture or {}
        half_s = sum(e["seconds"] for e in engine.gpu_self_check["fp16"].values())
        check("start-up (embedded, fp16 + graphs): self-check within a few seconds",
              "PASS" if half_s + capture.get("self_check_s", 99) <= 5.0 else "FAIL",
              f"load {load_s:.2f} s (half check {half_s:.2f} s); service start {start_s:.2f} s: {capture.get('graphs')} graphs "
              f"captured in {capture.get('capture_s')} s, replay check {capture.get('self_check_s')} s; in force: "
              f"{engine.precision}, graphs {engine.cuda_graphs}", seconds=load_s + start_s, value=half_s + capture.get("self_check_s", 0),
              graphs=capture.get("graphs"), capture_s=capture.get("capture_s"))
        record_verdicts(check, engine, "embedded fp16", shipped=True)
        for acoustic, vocoder in EMBEDDED_HALF_TABLES:  # the tables a user may choose: each recasts, rechecks, recaptures
            t1 = time.monotonic()
            in_force = engine.set_half_precision(acoustic, vocoder)  # the service is idle: nothing else uses the engine
            if not engine.cuda_graphs:  # turned off by an earlier check: ask again, as the panel's checkbox would
                engine.set_cuda_graphs(True)
            check(f"table acoustic {acoustic} / vocoder {vocoder}: graphs in force after their check",
                  "PASS" if engine.cuda_graphs else "NOTE", f"{in_force}; {time.monotonic() - t1:.2f} s; "
                  f"{'; '.join(engine.notes) or 'no notes'}", seconds=time.monotonic() - t1)
            record_verdicts(check, engine, f"embedded {acoustic}/{vocoder}", shipped=False)
        t1 = time.monotonic()
        svc.apply_settings(fp16=False)  # the panel's FP16 switch, through the worker
        if not engine.cuda_graphs:  # turned off by an earlier check: ask again, as the panel's checkbox would
            svc.apply_settings(cuda_graphs=False)
            svc.apply_settings(cuda_graphs=True)
        check("switch to fp32: graphs in force after their check", "PASS" if engine.cuda_graphs else "FAIL",
              f"{time.monotonic() - t1:.2f} s; {engine.cuda_graphs_detail or '; '.join(engine.notes)}", seconds=time.monotonic() - t1)
        record_verdicts(check, engine, "embedded fp32", shipped=True)
    finally:
        svc.close()
        engine.unload()


def startup_sambert(check, sambert_symbols: str | None, device: str = "cuda", size: str = "real") -> None:
    """A real-size Sambert folder (random weights) through the engine: load (FP16 half check), graphs (replay check)."""
    from app.engines.sambert.engine import SambertEngine
    from app.engines.sambert.frontend import PrecomputedFrontend
    from tests.fixtures.sambert_writer import FolderSpec, write_model_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model_folder(f"{tmp}/model", FolderSpec(size=size))
        frontend = functools.partial(PrecomputedFrontend, sambert_symbols) if sambert_symbols else None
        engine = SambertEngine(str(folder), frontend=frontend)
        t0 = time.monotonic()
        engine.load(device, fp16=True)
    load_s = time.monotonic() - t0
    try:
        t1 = time.monotonic()
        on = engine.set_cuda_graphs(True)
        capture = engine.graphs_capture or {}
        check("start-up (sambert real size, fp16 + graphs): graphs in force after their check", "PASS" if on else "FAIL",
              f"load {load_s:.2f} s; {capture.get('graphs')} graphs captured in {capture.get('capture_s')} s, replay check "
              f"{capture.get('self_check_s')} s; {engine.cuda_graphs_detail or '; '.join(engine.notes)}",
              seconds=time.monotonic() - t1)
        record_verdicts(check, engine, "sambert fp16", shipped=True)
        for decoder, vocoder in SAMBERT_HALF_TABLES + (("fp32", "fp32"),):
            t1 = time.monotonic()
            precision = engine.set_half_precision(decoder, vocoder) if decoder != "fp32" else engine.set_precision(False)
            if not engine.cuda_graphs:  # turned off by an earlier check: ask again
                engine.set_cuda_graphs(True)
            check(f"sambert {decoder}/{vocoder}: recast, recapture, checks",
                  "PASS" if engine.cuda_graphs else "FAIL" if decoder == "fp32" else "NOTE",
                  f"{precision}; {time.monotonic() - t1:.2f} s; {'; '.join(engine.notes) or 'no notes'}", seconds=time.monotonic() - t1)
            record_verdicts(check, engine, f"sambert {decoder}/{vocoder}", shipped=decoder == "fp32")
    finally:
        engine.unload()
