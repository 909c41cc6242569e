"""Operator and visitors: who is which, refusals on the server (not only greyed), the operator's page behind its own
login, local mode unchanged, and fair shares between gradio_client sessions; the visitor's page in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import time
import urllib.request
import uuid
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import httpx
import pytest

from app.service import TTSService
from app.settings import BatchSettings, ServeSettings
from app.web.roles import OPERATOR_ONLY, Access, caller_key, is_loopback, operator_only
from tests.test_app import ARTIFACTS, BROWSER_FLAGS, CHROMIUM, free_port, need_chromium

ADMIN = ("boss", "s3cret-pw")


# --- who is the operator (no server) ------------------------------------------------------------------------------
@pytest.mark.parametrize("host,share,environ,shared", [
    ("127.0.0.1", False, {}, False),
    ("localhost", False, {}, False),
    ("::1", False, {}, False),
    ("127.0.0.1", True, {}, True),  # a share link
    ("0.0.0.0", False, {}, True),  # every interface
    ("192.168.1.20", False, {}, True),
    ("myhost.example", False, {}, True),  # a name others may resolve
    ("127.0.0.1", False, {"SPACE_ID": "me/tts"}, True),  # a Hugging Face Space
])
def test_shared_mode_is_share_or_a_reachable_host_or_a_space(host, share, environ, shared):
    access = Access.of(ServeSettings(host=host, share=share, admin=ADMIN), environ)
    assert access.shared is shared and access.operator == "boss"
    assert is_loopback(host) is (host in ("127.0.0.1", "localhost", "::1"))


def test_local_mode_lets_everyone_tune_and_shared_mode_only_the_operator():
    local, shared, closed = Access(), Access(shared=True, operator="boss"), Access(shared=True)
    assert local.allows(None) and local.allows(gr.Request(session_hash="abc"))
    assert shared.allows(gr.Request(username="boss", session_hash="abc"))
    assert not shared.allows(gr.Request(username="guest")) and not shared.allows(gr.Request(session_hash="abc"))
    assert not shared.allows(None)  # not through Gradio: refused, not trusted
    assert not closed.allows(gr.Request(username="boss"))  # no operator login configured: nobody tunes
    assert OPERATOR_ONLY in shared.refusal() and "/operator" in shared.refusal()
    assert "--admin USER:PASSWORD" in closed.refusal() and "TTS_ADMIN" in closed.refusal() and "secret" in closed.refusal()
    assert local.page_tunes(False) and shared.page_tunes(True) and not shared.page_tunes(False) and not closed.page_tunes(True)
    assert local.page_note(False) is None and "TTS_ADMIN" in closed.page_note(False) and "boss" in shared.page_note(True)


def test_caller_key_is_the_user_when_logged_in_else_the_session():
    assert caller_key(gr.Request(username="ann", session_hash="s1")) == "user:ann"
    assert caller_key(gr.Request(session_hash="s1")) == "session:s1"
    assert caller_key(None) is None


class Knobs:
    """Stands in for Handlers: what operator_only needs is an `access`."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.calls: list[tuple] = []

    @operator_only
    def turn(self, a: int, b: int = 2, progress=gr.Progress()) -> int:
        self.calls.append((a, b))
        return a + b

    @operator_only
    def steps(self, n: int):
        yield from range(n)


def test_operator_only_adds_a_request_parameter_gradio_fills_and_refuses_before_running():
    import inspect

    from gradio.helpers import special_args

    knobs = Knobs(Access(shared=True, operator="boss"))
    assert list(inspect.signature(knobs.turn).parameters) == ["a", "b", "progress", "request"]
    inputs, _, _, _ = special_args(knobs.turn, [1, 5], request=gr.Request(username="boss"))  # what Gradio passes
    assert knobs.turn(*inputs) == 6
    inputs, _, _, _ = special_args(knobs.turn, [1, 5], request=gr.Request(session_hash="visitor"))
    with pytest.raises(gr.Error, match="only the operator can change server settings"):
        knobs.turn(*inputs)
    assert knobs.calls == [(1, 5)]  # the refused call never ran
    assert inspect.isgeneratorfunction(Knobs.steps)  # Gradio streams it as before
    assert list(knobs.steps(3, gr.Request(username="boss"))) == [0, 1, 2]
    with pytest.raises(gr.Error):
        next(knobs.steps(3, request=None))
    assert Knobs(Access()).turn(1) == 3  # local: everyone


def test_admin_flag_and_environment_and_cap_flag():
    from launch import parse_args, settings_from

    _, _, serve = settings_from(parse_args(["--admin", "boss:pw", "--max-queued-per-client", "0"]))
    assert serve.admin == ("boss", "pw") and serve.max_queued_per_client == 0
    os.environ["TTS_ADMIN"] = "root:from-env"
    try:
        assert settings_from(parse_args([]))[2].admin == ("root", "from-env")
    finally:
        del os.environ["TTS_ADMIN"]
    assert settings_from(parse_args([]))[2].admin is None
    with pytest.raises(ValueError, match="--admin .* must look like USER:PASSWORD"):
        settings_from(parse_args(["--admin", "boss"]))


# --- the launched app in shared mode ------------------------------------------------------------------------------
def launched(engine, access: Access, **serve):
    from app.web.ui import build_pages, launch_ui
    from profiling.monitor import Monitor

    settings = ServeSettings(port=free_port(), max_chars=300, **serve)
    service = TTSService(engine, BatchSettings(max_batch_size=8, max_wait_ms=30), settings).start(warmup=False)
    monitor = Monitor(interval_s=0.25, extra=service.stats).start()
    demo, operator_page = build_pages(service, monitor, access, streaming=False)
    url = launch_ui(demo, service, block=False, operator_page=operator_page)
    yield url, service
    demo.close()
    monitor.close()
    service.close()


@pytest.fixture(scope="module")
def shared_app(engine):
    """Shared (as with --share) with an operator login; bound to loopback so the test reaches it."""
    yield from launched(engine, Access(shared=True, operator=ADMIN[0]), admin=ADMIN)


def event(base: str, api_name: str, data: list, client: httpx.Client | None = None) -> dict:
    """Trigger one of the page's events the way the browser does (POST queue/join, read queue/data), private ones
    included: what a visitor can do from the browser's dev tools. Returns Gradio's process_completed message."""
    client = client or httpx.Client()
    config = client.get(base + "config", timeout=30).raise_for_status().json()
    fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)
    session = uuid.uuid4().hex
    body = {"data": data, "fn_index": fn_index, "trigger_id": None, "session_hash": session, "event_data": None}
    client.post(base + "gradio_api/queue/join", json=body, timeout=30).raise_for_status()
    with client.stream("GET", base + "gradio_api/queue/data", params={"session_hash": session}, timeout=300) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("no process_completed message")


def operator_client(url: str) -> httpx.Client:
    client = httpx.Client()
    client.post(url + "operator/login", data={"username": ADMIN[0], "password": ADMIN[1]}, timeout=30).raise_for_status()
    return client


SETTINGS_CHANGE = [False, 2, 40, True, False, "torch"]  # fp16, max batch, max wait ms, clear cache, CUDA graphs, runtime
RUNTIME_SWITCH = [False, 8, 15, False, False, "onnxruntime"]  # the vocoder runtime radio's event
COMPARISON = [["off"], ["2"], ["off"], 1, 1, 1, ["off"], False, 30, ["torch"]]  # one setting, one text, one client, no capacity search
TRACE = [1]  # record a trace of the next batch


def test_visitor_settings_change_and_comparison_are_refused_on_the_server(shared_app):
    url, service = shared_app
    before, batches_before = service.settings, service.health()["batches_run"]
    for api_name, data in (("apply_settings", SETTINGS_CHANGE), ("apply_settings_3", RUNTIME_SWITCH),
                           ("apply_settings_4", SETTINGS_CHANGE), ("compare", COMPARISON), ("record_trace", TRACE)):
        answer = event(url, api_name, data)
        assert answer["success"] is False and OPERATOR_ONLY in answer["output"]["error"], (api_name, answer)
        assert "/operator" in answer["output"]["error"]
    assert service.settings == before and service.health()["batches_run"] == batches_before  # nothing changed, nothing ran


def test_operator_page_needs_its_login_and_a_wrong_one_is_refused(shared_app):
    url, _ = shared_app
    assert httpx.get(url + "operator/config", timeout=30).status_code == 401
    wrong = httpx.post(url + "operator/login", data={"username": ADMIN[0], "password": "guess"}, timeout=30)
    assert wrong.status_code == 400
    with pytest.raises(httpx.HTTPStatusError):  # a visitor's page session cannot reach the operator's events
        event(url + "operator/", "apply_settings", SETTINGS_CHANGE)


def test_operator_changes_settings_and_runs_a_comparison(shared_app):
    url, service = shared_app
    before = service.settings
    client = operator_client(url)
    try:
        answer = event(url + "operator/", "apply_settings", SETTINGS_CHANGE, client)
        assert answer["success"] is True and "max batch 2, max wait 40 ms, cache clearing on" in answer["output"]["data"][0]
        assert (service.settings.max_batch_size, service.settings.max_wait_ms, service.settings.clear_cache) == (2, 40, True)
        answer = event(url + "operator/", "compare", COMPARISON, client)
        assert answer["success"] is True, answer
        table = answer["output"]["data"][0]
        row = dict(zip(table["headers"], table["data"][0]))
        assert row["status"].startswith("ok") and row["max_batch_size"] == 2 and row["requests"] == 1
        restore = [before.fp16, before.max_batch_size, before.max_wait_ms, before.clear_cache, before.cuda_graphs, before.runtime]
        assert event(url + "operator/", "apply_settings", restore, client)["success"] is True
    finally:
        client.close()
    assert service.settings == before


def test_visitors_still_synthesize_through_the_api(shared_app):
    from gradio_client import Client

    url, _ = shared_app
    path = Client(url, verbose=False).predict("你好，欢迎使用。", "Aijia", "neutral", api_name="/synthesize")
    with wave.open(path, "rb") as w:
        assert 0.8 < w.getnframes() / w.getframerate() < 4


def wav_s(path: str) -> float:
    with wave.open(path, "rb") as w:
        return w.getnframes() / w.getframerate()


def test_flooding_session_does_not_hold_back_another_session(shared_app):
    """One gradio_client session sends 64 texts, another sends 1 a moment later: the second is answered within about
    two batches of its arrival (counted in items the engine finished), while the flood is still running."""
    from gradio_client import Client

    url, service = shared_app
    flood_texts = ["春天来了。", "花儿开了。", "小鸟在唱歌。", "我们去上学。"]
    lone_text = "请关好窗户，外面正在下雨。"
    alone = {t: wav_s(Client(url, verbose=False).predict(t, "Aijia", "neutral", api_name="/synthesize"))
             for t in [*flood_texts, lone_text]}
    flooder, lone = Client(url, verbose=False, max_workers=64), Client(url, verbose=False)
    start = service.health()["items_run"]
    jobs = [flooder.submit(flood_texts[i % 4], "Aijia", "neutral", api_name="/synthesize") for i in range(64)]
    deadline = time.monotonic() + 60
    while service.queue_depth() < 48 and time.monotonic() < deadline:  # the flood is queued
        time.sleep(0.01)
    at_arrival = service.health()["items_run"] - start
    lone_s = wav_s(lone.predict(lone_text, "Aijia", "neutral", api_name="/synthesize"))
    at_answer = service.health()["items_run"] - start
    # finished between its arrival and its answer: the batch in flight, its own batch, and one more of slack for the
    # answer's trip back (first come, first served would be everything still queued: 48 or more)
    assert at_answer - at_arrival <= 3 * 8, (at_arrival, at_answer)
    assert at_answer < 64 - 8, "the flood should still be running"
    results = [wav_s(job.result(timeout=300)) for job in jobs]
    assert abs(lone_s - alone[lone_text]) < 0.05
    for i, seconds in enumerate(results):  # every request its own audio
        assert abs(seconds - alone[flood_texts[i % 4]]) < 0.05, (i, seconds)


@pytest.fixture(scope="module")
def closed_app(engine):
    """Shared without an operator login: settings and comparison are read-only for everyone."""
    yield from launched(engine, Access(shared=True))


def test_shared_without_operator_login_refuses_everyone_and_says_how_to_enable(closed_app):
    url, service = closed_app
    before = service.settings
    answer = event(url, "apply_settings", SETTINGS_CHANGE)
    assert answer["success"] is False and "--admin USER:PASSWORD" in answer["output"]["error"]
    assert "TTS_ADMIN" in answer["output"]["error"] and service.settings == before
    assert httpx.get(url + "operator/config", timeout=30).status_code == 404  # no operator page to log in to
    config = httpx.get(url + "config", timeout=30).json()
    notes = [c["props"].get("value", "") for c in config["components"] if c.get("type") == "markdown"]
    assert any("TTS_ADMIN" in str(n) and "secret" in str(n) for n in notes)  # the page says how


def test_local_mode_anyone_may_tune_as_before(engine):
    app = launched(engine, Access())
    url, service = next(app)
    try:
        answer = event(url, "apply_settings", SETTINGS_CHANGE)
        assert answer["success"] is True and service.settings.clear_cache is True
        assert httpx.get(url + "operator/config", timeout=30).status_code == 404
    finally:
        next(app, None)


# --- the pages in headless Chromium -------------------------------------------------------------------------------
@pytest.mark.browser
def test_visitor_sees_disabled_controls_is_refused_when_forcing_one_and_still_speaks_operator_logs_in(shared_app):
    need_chromium()
    from playwright.sync_api import expect, sync_playwright

    url, service = shared_app
    before = service.settings
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(url, wait_until="domcontentloaded")
        expect(page.locator("#settings-note")).to_contain_text(OPERATOR_ONLY, timeout=30_000)
        for control in ("#clear-cache input", "#max-batch input[type=number]", "#max-wait input[type=number]"):
            expect(page.locator(control)).to_be_disabled()
        expect(page.locator("#runtime input").first).to_be_disabled()
        page.get_by_role("tab", name="Compare").click()
        expect(page.locator("#run-compare")).to_be_disabled()
        page.get_by_role("tab", name="Live").click()
        # the visitor still speaks
        page.locator("#tts-text textarea").fill("今天天气很好。")
        page.locator("#synthesize").click()
        expect(page.locator("#speech audio[src]").first).to_have_attribute("src", re.compile(r"^(blob:|http).+"), timeout=60_000)
        # re-enabled in dev tools and clicked: the server refuses it and says why
        page.locator("#clear-cache input").evaluate("e => { e.disabled = false; }")
        page.locator("#clear-cache input").click()
        expect(page.get_by_text(OPERATOR_ONLY).first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "roles-visitor.png"), full_page=True)
        assert service.settings == before
        # the operator logs in through the login form of the operator's page and tunes
        operator = browser.new_page(viewport={"width": 1400, "height": 1100})
        operator.goto(url + "operator/", wait_until="domcontentloaded")
        operator.get_by_label(re.compile("username", re.I)).fill(ADMIN[0])
        operator.get_by_label(re.compile("password", re.I)).fill(ADMIN[1])
        operator.get_by_role("button", name=re.compile("login", re.I)).click()
        expect(operator.locator("#settings-note")).to_contain_text("You are the operator", timeout=30_000)
        expect(operator.locator("#clear-cache input")).to_be_enabled()
        expect(operator.locator("#memory-plot .js-plotly-plot").first).to_be_visible(timeout=30_000)  # its panel ticks too
        operator.locator("#clear-cache input").click()
        deadline = time.monotonic() + 30
        while not service.settings.clear_cache and time.monotonic() < deadline:
            time.sleep(0.1)
        assert service.settings.clear_cache is True
        operator.screenshot(path=str(ARTIFACTS / "roles-operator.png"), full_page=True)
        operator.locator("#clear-cache input").click()  # back as it was
        deadline = time.monotonic() + 30
        while service.settings.clear_cache and time.monotonic() < deadline:
            time.sleep(0.1)
        browser.close()
    assert service.settings == before
