"""The launched app on loopback: gradio_client API, /health, concurrency, the page in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.service import TTSService
from app.settings import BatchSettings, ServeSettings

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]


def need_chromium() -> None:
    """Skip without Debian's Chromium, or fail where the browser tests must run (REQUIRE_BROWSER, set by .ci/run)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing but REQUIRE_BROWSER is set")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launched_app(engine, streaming: bool | None = None):
    """The real app on a free loopback port; yields its URL, then shuts it down."""
    from app.web.ui import build_ui, launch_ui
    from profiling.monitor import Monitor

    serve = ServeSettings(port=free_port(), max_chars=300)
    service = TTSService(engine, BatchSettings(max_batch_size=8, max_wait_ms=30), serve).start(warmup=False)
    monitor = Monitor(interval_s=0.25, extra=service.stats).start()
    demo = build_ui(service, monitor, streaming=streaming)
    url = launch_ui(demo, service, block=False)
    yield url
    demo.close()
    monitor.close()
    service.close()


@pytest.fixture(scope="module")
def app_url(engine):
    yield from launched_app(engine)


def test_health_is_json(app_url):
    with urllib.request.urlopen(app_url.rstrip("/") + "/health", timeout=10) as r:
        assert r.headers["content-type"].startswith("application/json")
        body = json.loads(r.read())
    assert body["status"] == "ok" and body["engine"] == "embedded" and body["model_loaded"]
    # what is in force: no CUDA here, so the dynamic decoding loop, and the note says why
    assert body["cuda_graphs"] is False and body["settings"]["cuda_graphs"] is False and "CUDA graphs need CUDA" in body["note"]
    checks = body["gpu_self_check"]  # every self-check skipped on CPU, saying why
    assert checks["graphs"]["status"] == "skipped" and "need CUDA" in checks["graphs"]["detail"]
    assert [e["status"] for e in checks["fp16"].values()] == ["skipped", "skipped"] and body["cuda_graphs_capture"] is None
    assert set(body["stages"]) == {"last_request_s", "window_s", "window_requests", "window_share"}  # the per-request split


def wav_seconds(path: str) -> float:
    with wave.open(path, "rb") as w:
        assert w.getframerate() == 22050 and w.getsampwidth() == 2
        return w.getnframes() / w.getframerate()


def test_client_synthesize_endpoint_returns_audio(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    path = client.predict("你好，欢迎使用。", "Aijia", "neutral", api_name="/synthesize")
    assert 0.8 < wav_seconds(path) < 4


def test_client_gets_clear_errors(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match="nobody"):  # Gradio's dropdown check names the bad value
        client.predict("你好", "nobody", "neutral", api_name="/synthesize")
    with pytest.raises(Exception, match="the limit is 300"):
        client.predict("字" * 301, "Aijia", "neutral", api_name="/synthesize")


def test_client_synthesize_takes_optional_speed_pitch_volume(app_url):
    """The 3-argument call keeps working; speed, pitch and volume are optional, by position or by name."""
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/synthesize"]["parameters"]
    assert [(p["parameter_name"], p["parameter_has_default"], p["parameter_default"]) for p in api[3:]] == [
        ("speed", True, 1.0), ("pitch", True, 0.0), ("volume", True, 0.0)]
    text = "今天的天气真不错，我们去公园走走吧。"
    plain = wav_seconds(client.predict(text, "Aijia", "neutral", api_name="/synthesize"))
    positional = wav_seconds(client.predict(text, "Aijia", "happy", 1.5, 3, -6, api_name="/synthesize"))
    named = wav_seconds(client.predict(text=text, speaker="Aijia", emotion="neutral", speed=2.0, api_name="/synthesize"))
    assert abs(positional - (plain - 0.1) / (1.5 * 1.05) - 0.1) < 0.1, (plain, positional)  # edges (0.05 s each) stay
    assert abs(named - (plain - 0.1) / 2.0 - 0.1) < 0.1, (plain, named)


def test_client_gets_clear_errors_for_controls(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    with pytest.raises(Exception, match=r"speed=3\.0 is outside 0\.5 to 2 \(tempo factor\)"):
        client.predict("你好。", "Aijia", "neutral", 3.0, api_name="/synthesize")
    with pytest.raises(Exception, match=r"volume=9\.0 is outside -12 to 6 dB"):
        client.predict("你好。", "Aijia", "sad", volume=9.0, api_name="/synthesize")
    with pytest.raises(Exception, match="furious"):  # Gradio's dropdown check names the bad value
        client.predict("你好。", "Aijia", "furious", api_name="/synthesize")


def test_concurrent_client_calls_all_succeed(app_url):
    from gradio_client import Client

    texts = ["春天来了。", "花儿开了。", "小鸟在唱歌。", "我们去上学。", "今天下雨了。", "请关好窗户。"]

    def call(text: str) -> float:
        return wav_seconds(Client(app_url, verbose=False).predict(text, "biaobei", "neutral", api_name="/synthesize"))

    with ThreadPoolExecutor(len(texts)) as pool:
        seconds = list(pool.map(call, texts))
    assert all(0.5 < s < 4 for s in seconds)


@pytest.fixture(scope="module", params=[False, True], ids=["whole", "streamed"])
def page_url(request, engine):
    """The app answering whole texts (no ffmpeg) and streaming sentence by sentence (needs ffmpeg)."""
    need_chromium()
    if request.param and shutil.which("ffmpeg") is None:
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("ffmpeg is missing but REQUIRE_BROWSER is set: the streamed page cannot be tested")
        pytest.skip("ffmpeg not installed: Gradio cannot stream audio without it (apt-get install ffmpeg)")
    yield from launched_app(engine, streaming=request.param)


@pytest.mark.browser
def test_page_in_headless_chromium(page_url, request):
    from playwright.sync_api import expect, sync_playwright

    streamed = request.node.callspec.id == "streamed"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(page_url, wait_until="domcontentloaded")
        plot = page.locator("#memory-plot .js-plotly-plot").first
        expect(plot).to_be_visible(timeout=30_000)
        page.locator("#tts-text textarea").fill("今天天气很好。我们一起去公园散步吧。")
        expect(page.locator("#char-counter")).to_contain_text("18 / 300", timeout=10_000)
        first_plot = plot.inner_html()
        page.locator("#emotion input").click()  # the dropdown is live: pick a rule-rendered emotion and a speed
        page.get_by_role("option", name="happy").click()
        expect(page.locator("#emotion input")).to_have_value("happy")
        page.locator("#speed input[type=number]").fill("1.5")
        page.locator("#speed input[type=number]").press("Enter")
        page.locator("#synthesize").click()
        # The player renders its audio element twice on the whole-answer path (one hidden): the one with a source counts.
        audio = page.locator("#speech audio[src]").first
        expect(audio).to_have_attribute("src", re.compile(r"^(blob:|http).+"), timeout=60_000)
        timing = re.compile(r"sentence 2/2 ready") if streamed else re.compile(r"2 sentence\(s\) in \d+ batch.*happy, speed 1.5x")
        expect(page.locator("#timing")).to_contain_text(timing, timeout=60_000)
        page.wait_for_timeout(2500)  # at least two panel ticks
        assert plot.inner_html() != first_plot, "the live panel did not update"
        page.screenshot(path=str(ARTIFACTS / f"app-{request.node.callspec.id}.png"), full_page=True)
        browser.close()


def test_panel_plots_each_batch_by_stage_and_the_share_of_time(engine):
    from app.web.handlers import Handlers
    from profiling.monitor import Monitor

    svc = TTSService(engine, BatchSettings(max_batch_size=2)).start(warmup=False)
    monitor = Monitor(interval_s=0.25, extra=svc.stats)
    try:
        handlers = Handlers(svc, monitor)
        svc.submit("你好，欢迎使用。", "Aijia")
        *_, stages, share, status = handlers.panel()
    finally:
        svc.close()
    assert [t.name for t in stages.data] == ["frontend", "encoder", "decoder", "postnet", "vocoder", "other"]
    frame = handlers.stages_frame()
    assert frame.groupby("batch")["seconds"].sum().iloc[-1] == pytest.approx(svc.span_log[-1].wall_s)
    assert {t.name for t in share.data} >= {"decoder", "vocoder"} and "In force" in status


@pytest.mark.browser
def test_record_trace_in_headless_chromium(app_url):
    """Click "Record trace", speak meanwhile, and see the top-operators table and the trace's download link appear."""
    from playwright.sync_api import expect, sync_playwright

    need_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(app_url, wait_until="domcontentloaded")
        page.get_by_role("tab", name="Trace").click()
        batches = page.get_by_label("Batches to trace")
        batches.fill("1")
        batches.press("Enter")
        page.locator("#record-trace").click()
        page.locator("#tts-text textarea").fill("今天天气很好，我们一起去公园散步吧。")  # traffic to trace
        page.locator("#synthesize").click()
        expect(page.locator("#trace-summary")).to_contain_text("Traced 1 batch", timeout=180_000)
        expect(page.locator("#trace-ops")).to_contain_text("decoder", timeout=10_000)
        expect(page.locator("#trace-ops")).to_contain_text("vocoder")
        link = page.locator("#trace-file a[href]").first
        expect(link).to_have_attribute("href", re.compile(r"\.json\.gz"), timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "app-trace.png"), full_page=True)
        browser.close()


def test_modelscope_engine_without_extras_exits_with_a_clear_message():
    if shutil.which(sys.executable) is None:
        pytest.skip("no interpreter path")
    proc = subprocess.run([sys.executable, "launch.py", "--engine", "modelscope", "--say", "你好"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr


def run_launch(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


def test_say_renders_emotion_and_controls(tmp_path):
    plain, styled = tmp_path / "plain.wav", tmp_path / "styled.wav"
    text = "今天的天气真不错，我们去公园走走吧。"
    assert run_launch("--say", text, "--seed", "1", "--out", str(plain)).returncode == 0
    proc = run_launch("--say", text, "--seed", "1", "--emotion", "sad", "--speed", "1.5", "--pitch", "3", "--volume", "-6",
                      "--out", str(styled))
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = (wav_seconds(str(plain)) - 0.1) / (1.5 * 0.9) + 0.1  # sad's own tempo is 0.9
    assert abs(wav_seconds(str(styled)) - expected) < 0.1


@pytest.mark.parametrize(
    "args,message",
    [
        (["--speed", "3"], "speed=3.0 is outside 0.5 to 2 (tempo factor)"),
        (["--pitch", "-6.5"], "pitch=-6.5 is outside -6 to 6 semitones"),
        (["--volume", "7"], "volume=7.0 is outside -12 to 6 dB"),
        (["--emotion", "furious"], "unknown emotion 'furious' for engine embedded; choose one of: neutral, happy, sad"),
    ],
)
def test_say_refuses_bad_controls_with_exit_2_and_the_message(args, message, tmp_path):
    proc = run_launch("--say", "你好。", "--out", str(tmp_path / "x.wav"), *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and f"error: {message}" in proc.stderr
    assert not (tmp_path / "x.wav").exists()


def test_vocoder_runtime_switch_in_headless_chromium(app_url, engine, tmp_path):
    """Pick onnxruntime in the Live tab where the export cannot be written: the radio goes back to torch and the page
    says why. Pick it again once it can: the vocoder is exported, the In force line says so, speech still comes; back
    to torch the same way."""
    from playwright.sync_api import expect, sync_playwright

    need_chromium()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    before, engine.onnx_dir = engine.onnx_dir, str(blocker / "onnx")  # the export cannot be written here
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(app_url, wait_until="domcontentloaded")
            expect(page.locator("#status")).to_contain_text("vocoder on torch", timeout=30_000)
            page.locator("#runtime").get_by_text("onnxruntime", exact=True).click()
            expect(page.locator("#status")).to_contain_text("ONNX Runtime not in force", timeout=60_000)
            expect(page.locator("#runtime").get_by_label("torch", exact=True)).to_be_checked()  # shows what runs
            engine.onnx_dir = str(tmp_path / "onnx")  # this test's own export
            page.locator("#runtime").get_by_text("onnxruntime", exact=True).click()  # asked again: tried again
            expect(page.locator("#status")).to_contain_text("vocoder on ONNX Runtime (vocoder: embedded-melgan-fp32 on CPU",
                                                            timeout=120_000)
            page.locator("#tts-text textarea").fill("今天天气很好。")
            page.locator("#synthesize").click()
            expect(page.locator("#speech audio[src]").first).to_have_attribute("src", re.compile(r"^(blob:|http).+"), timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "app-onnxruntime.png"), full_page=True)
            page.locator("#runtime").get_by_text("torch", exact=True).click()
            expect(page.locator("#status")).to_contain_text("vocoder on torch", timeout=60_000)
            browser.close()
    finally:
        engine.set_runtime("torch")
        engine.onnx_dir = before
