"""The GPU self-check: captured replay vs the dynamic loop, half-precision modules vs FP32; /health and the panel.

The comparisons are tested as pure functions. The engines are tested on CPU, where two things stand in for CUDA, each
at its boundary and named where used: graph capture (tests/fixtures/capture_sim.py runs every warm-up eagerly in
build order and replays by running the step; a wrong replay is a runner that corrupts the step's output) and FP16
support (`fp16_supported` says yes; the half module runs bf16 on the CPU, and a non-finite one is a vocoder whose
output is NaN whenever it runs below FP32). Everything after that boundary is the engines' and the service's own code.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from app.engines import self_check as checks
from app.engines.base import Utterance
from app.engines.embedded.engine import EmbeddedEngine
from app.engines.self_check import Decoded
from app.service import TTSService
from app.settings import BatchSettings
from tests.fixtures.capture_sim import simulate_capture, small_embedded_static
from tests.fixtures.sambert_writer import make_folder


def items(*lengths, stopped=True, value=0.0):
    return [Decoded(np.full((n, 80), value, np.float32), stopped) for n in lengths]


# --- the comparisons -------------------------------------------------------------------------------------------
def test_an_equal_replay_passes_and_says_by_how_much():
    dynamic = items(50, 60)
    replay = [Decoded(d.mel + 1e-3, d.stopped) for d in dynamic]
    verdict = checks.compare_replay(replay, dynamic, "fp32")
    assert verdict.status == "passed" and verdict.difference == pytest.approx(1e-3) and verdict.tolerance == 0.02
    drifted = [Decoded(d.mel.copy(), d.stopped) for d in dynamic]
    drifted[1].mel[40:44] += 0.8  # half precision: the two paths drift apart for a few frames, then agree again
    assert checks.compare_replay(drifted, dynamic, "fp16").status == "passed"
    assert checks.compare_replay(drifted, dynamic, "fp32").status == "failed"


@pytest.mark.parametrize("replay, what", [
    (items(50, 61), "frame counts differ on 1 of 2 items (item 1: replay 61, dynamic 60)"),
    (items(50, 60, stopped=False), "stop flags differ on 2 of 2 items"),
    (items(50, 60, value=0.3), "mean |mel diff| 3.00e-01"),
    (items(50, 60, value=float("nan")), "non-finite values on 2 of 2 items"),
])
def test_a_wrong_replay_fails_naming_what_differed(replay, what):
    verdict = checks.compare_replay(replay, items(50, 60), "fp32")
    assert verdict.status == "failed" and what in verdict.detail


def test_half_precision_judged_by_finiteness_frame_counts_and_waveform_error():
    reference = items(50, 60, 70, 80)
    assert checks.compare_half_mels("fp16", items(50, 60, 70, 81), reference).status == "passed"  # 1 of 4 moved
    verdict = checks.compare_half_mels("fp16", items(51, 61, 71, 80), reference)
    assert verdict.status == "failed" and verdict.difference == 0.75 and verdict.tolerance == checks.HALF_FRAMES_CHANGED_MAX
    assert "non-finite" in checks.compare_half_mels("bf16", items(50, 60, 70, 80, value=np.inf), reference).detail
    wave = np.sin(np.linspace(0, 100, 4000)).astype(np.float32)
    assert checks.compare_half_waves("fp16", [wave * 1.001], [wave]).status == "passed"
    saturated = checks.compare_half_waves("fp16", [np.sign(wave) * 0.2], [wave])  # finite, but not the FP32 waveform
    assert saturated.status == "failed" and saturated.difference > checks.HALF_VOCODER_REL_ERROR_MAX


def test_replicas_reports_merge_to_the_worst_entry():
    ok, bad = {"status": "passed"}, {"status": "failed", "detail": "x"}
    skip = {"status": "skipped"}
    merged = checks.merge([{"graphs": ok, "fp16": {"acoustic": skip}}, {"graphs": bad, "fp16": {"acoustic": ok}}])
    assert merged == {"graphs": bad, "fp16": {"acoustic": ok}}
    assert checks.failures({"graphs": bad, "fp16": {"vocoder": bad, "acoustic": ok}}) == ["graphs", "fp16 vocoder"]


def test_half_precision_trial_and_fallback_leave_fp32_weights_exact():
    from app.engines import precision

    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    original = {k: v.clone() for k, v in module.state_dict().items()}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):  # on, the table changed, off again
        precision.cast(module, dtype)
    assert all(torch.equal(module.state_dict()[k], v) for k, v in original.items())


# --- the embedded engine (real weights, CPU) ---------------------------------------------------------------------
@pytest.fixture
def small(engine, monkeypatch):
    """The session engine with small buckets and two short self-check items (CPU time), graphs and FP32 after."""
    small_embedded_static(monkeypatch, engine)
    yield engine
    engine.set_cuda_graphs(False)
    engine.set_precision(False)


def test_on_cpu_every_check_is_skipped_and_says_why(engine):
    svc = TTSService(engine, BatchSettings(cuda_graphs=True)).start(warmup=False)
    try:
        report = svc.health()["gpu_self_check"]
    finally:
        svc.close()
    assert report["graphs"]["status"] == "skipped" and "need CUDA" in report["graphs"]["detail"]
    assert set(report["fp16"]) == {"acoustic", "vocoder"}
    assert all(e["status"] == "skipped" and "FP16 needs CUDA" in e["detail"] for e in report["fp16"].values())


def test_a_correct_replay_passes_and_graphs_stay_on(small, monkeypatch):
    sim = simulate_capture(monkeypatch)  # stands in for CUDA graph capture
    svc = TTSService(small, BatchSettings(max_batch_size=2, cuda_graphs=True)).start(warmup=False)
    try:
        health = svc.health()
    finally:
        svc.close()
    graphs = health["gpu_self_check"]["graphs"]
    assert graphs["status"] == "passed", graphs
    assert graphs["difference"] <= graphs["tolerance"] == checks.GRAPH_MEL_TOLERANCE["fp32"] and graphs["seconds"] > 0
    assert health["cuda_graphs"] is True and health["note"] is None
    capture = health["cuda_graphs_capture"]
    assert capture["graphs"] == sim.captures == 4 and capture["capture_s"] > 0 and capture["self_check_s"] == graphs["seconds"]


def perturb_mel(engine):
    """A wrong replay: the chunk's frames come back 0.5 off (as from a stale buffer)."""
    return lambda step: lambda: (step(), engine._static.graphs.arena["mel"].add_(0.5))


def drop_first_stop_flag(engine):
    """A wrong replay: row 0's stop flag is lost after every chunk (as from a missed copy)."""
    return lambda step: lambda: (step(), engine._static.graphs.arena["stopped"][0].fill_(False))


@pytest.mark.parametrize("wrong, what", [(perturb_mel, "mean |mel diff| 5."), (drop_first_stop_flag, "stop flags differ")])
def test_a_wrong_replay_turns_graphs_off_and_every_caller_keeps_its_own_audio(small, monkeypatch, wrong, what):
    from app.web.handlers import Handlers
    from profiling.monitor import Monitor

    svc = TTSService(small, BatchSettings(max_batch_size=2, max_wait_ms=50, cuda_graphs=False)).start(warmup=False)
    try:
        jobs = [("春天来了", "Aijia"), ("花儿开了", "biaobei"), ("小鸟在唱歌", "Aijia"), ("我们去上学", "Xiaoxue")]
        alone = {job: svc.submit(*job).audio for job in jobs}  # the dynamic loop, one at a time
        simulate_capture(monkeypatch, runner=wrong(small))  # stands in for CUDA graph capture, with a wrong replay
        assert svc.apply_settings(cuda_graphs=True).cuda_graphs is False
        health = svc.health()
        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(lambda job: (job, svc.submit(*job)), jobs))
        status = Handlers(svc, Monitor()).status()
    finally:
        svc.close()
    graphs = health["gpu_self_check"]["graphs"]
    assert graphs["status"] == "failed" and what in graphs["detail"], graphs
    assert health["cuda_graphs"] is False and small._static is None
    assert "CUDA graphs failed their self-check" in health["note"] and what in health["note"]
    assert "GPU self-check failed:** graphs" in status.splitlines()[0]  # the panel's "In force" line
    for job, result in results:
        assert len(result.audio) == len(alone[job]) and np.corrcoef(alone[job], result.audio)[0, 1] > 0.99, job


def test_a_non_finite_half_module_falls_back_to_fp32_with_a_note(small, monkeypatch):
    # Stands in for CUDA: FP16 "supported" on the CPU; the half table runs the vocoder in bf16 (the CPU has it) and the
    # vocoder returns NaN whenever it runs below FP32, as an overflowing half-precision vocoder would.
    monkeypatch.setattr(EmbeddedEngine, "fp16_supported", property(lambda self: True))
    monkeypatch.setattr(small, "half_precision", {"acoustic": "fp32", "vocoder": "bf16"})
    vocode = small._vocoder.vocode_many

    def overflowing(mels, **kw):
        out = vocode(mels, **kw)
        return [a * float("nan") for a in out] if small._vocoder.pre.weight.dtype != torch.float32 else out

    monkeypatch.setattr(small._vocoder, "vocode_many", overflowing)
    svc = TTSService(small, BatchSettings(fp16=False, max_batch_size=2, cuda_graphs=False)).start(warmup=False)
    try:
        before = svc.submit("你好。", "Aijia").audio  # FP32
        assert svc.apply_settings(fp16=True).fp16  # the self-check runs on the worker, between batches
        after = svc.submit("你好。", "Aijia").audio
        health = svc.health()
    finally:
        svc.close()
    vocoder, acoustic = health["gpu_self_check"]["fp16"]["vocoder"], health["gpu_self_check"]["fp16"]["acoustic"]
    assert vocoder["status"] == "failed" and "non-finite samples on 2 of 2 items" in vocoder["detail"], vocoder
    assert acoustic["status"] == "skipped" and "runs acoustic in fp32" in acoustic["detail"]
    assert small._vocoder.pre.weight.dtype == torch.float32 and health["precision"] == "fp32"
    assert "FP16 self-check: vocoder runs fp32: bf16 failed" in health["note"]
    np.testing.assert_allclose(after, before, atol=1e-6)  # its own audio, from the FP32 vocoder


# --- the sambert engine (random weights, CPU) --------------------------------------------------------------------
@pytest.fixture(scope="module")
def sambert(tmp_path_factory):
    from app.engines.sambert.engine import SambertEngine

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    eng = SambertEngine(model=str(make_folder(tmp_path_factory.mktemp("selfcheck"))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        eng.load("cpu", fp16=False)
    yield eng
    eng.unload()
    torch.set_num_threads(threads)


def test_sambert_replay_checked_correct_then_wrong(sambert, monkeypatch):
    simulate_capture(monkeypatch)  # stands in for CUDA graph capture
    monkeypatch.setattr(sambert, "max_batch_size", 4)  # buckets 1, 2, 4: the four self-check items fill bucket 4
    try:
        assert sambert.set_cuda_graphs(True), sambert.notes
        assert sambert.gpu_self_check["graphs"]["status"] == "passed"
        voice = next(iter(sambert._voices.values()))
        simulate_capture(monkeypatch, runner=lambda step: lambda: (step(), voice.static.graphs.arena["out"].add_(1.0)))
        assert not sambert.set_cuda_graphs(True)
        graphs = sambert.gpu_self_check["graphs"]
        assert graphs["status"] == "failed" and graphs["difference"] > graphs["tolerance"], graphs
        assert voice.static is None and any("failed their self-check" in n for n in sambert.notes)
    finally:
        sambert.set_cuda_graphs(False)


def test_sambert_non_finite_half_decoder_falls_back(sambert, monkeypatch):
    from app.engines.sambert.engine import SambertEngine

    # Stands in for CUDA: FP16 "supported"; the decoder runs bf16 on the CPU, with its postnet returning NaN below FP32.
    monkeypatch.setattr(SambertEngine, "fp16_supported", property(lambda self: True))
    monkeypatch.setattr(sambert, "half_precision", {"decoder": "bf16", "vocoder": "fp32"})
    voice = next(iter(sambert._voices.values()))
    postnet = voice.acoustic.mel_postnet.forward
    monkeypatch.setattr(voice.acoustic.mel_postnet, "forward",
                        lambda x, mask: postnet(x, mask) * (float("nan") if x.dtype != torch.float32 else 1.0))
    try:
        sambert.set_precision(True)
        decoder = sambert.gpu_self_check["fp16"]["decoder"]
        assert decoder["status"] == "failed" and "non-finite values" in decoder["detail"], decoder
        assert voice.decoder_dtype == torch.float32 and any("decoder runs fp32" in n for n in sambert.notes)
        audio = sambert.synthesize([Utterance("你好。", sambert.default_speaker)])[0]
        assert audio.size and np.isfinite(audio).all()
    finally:
        sambert.set_precision(False)
    assert sambert.gpu_self_check["fp16"]["decoder"]["status"] == "skipped"
    assert not any("self-check" in n for n in sambert.notes)


# --- CUDA: the real thing ----------------------------------------------------------------------------------------
@pytest.mark.requires_cuda
def test_cuda_start_up_self_check_passes_with_the_shipped_settings(cuda_engine):
    cuda_engine.set_precision(True)
    svc = TTSService(cuda_engine, BatchSettings(fp16=True, cuda_graphs=True)).start(warmup=False)
    try:
        health = svc.health()
    finally:
        svc.close()
        cuda_engine.set_cuda_graphs(False)
    report = health["gpu_self_check"]
    assert report["graphs"]["status"] == "passed" and health["cuda_graphs"], report["graphs"]
    assert report["fp16"]["acoustic"]["status"] == "passed", report["fp16"]
    assert health["cuda_graphs_capture"]["graphs"] == 28 and health["cuda_graphs_capture"]["capture_s"] > 0
