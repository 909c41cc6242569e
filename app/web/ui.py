"""gr.Blocks wiring: main column (text, speaker, emotion, audio) and the profiler side panel."""
from __future__ import annotations

import sys

import gradio as gr

from app.web.handlers import Handlers, emotion_choices, emotion_info, ffmpeg_available, speaker_choices
from app.web.roles import OPERATOR_PATH, Access
from app.service import TTSService
from app.settings import PITCH_RANGE_ST, RUNTIMES, SPEED_RANGE, VOLUME_RANGE_DB, ServeSettings
from profiling.capacity import default_slo_p95_s
from profiling.monitor import Monitor
from profiling.trace import DEFAULT_BATCHES, MAX_BATCHES


PANEL_REFRESH_S = 1.0
EXAMPLES = [
    "欢迎使用中文语音合成演示。",
    "今天是2024年3月5日，北京的气温是12℃，空气质量良好。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
]
COUNTER_JS = "(t) => `${[...(t || '')].length} / MAX characters`"


def build_ui(service: TTSService, monitor: Monitor, streaming: bool | None = None, access: Access | None = None,
             operator_page: bool = False) -> gr.Blocks:
    """Build the page: the speech column and the profiler side panel; handlers live in app.web.handlers.

    streaming: stream audio sentence by sentence (needs ffmpeg); None decides by whether ffmpeg is installed.
    access: who may tune the server (default: local, everyone); operator_page: this is the operator's page.
    """
    access = access or Access()
    h = Handlers(service, monitor, streaming=ffmpeg_available() if streaming is None else streaming, access=access)
    tunes, note = access.page_tunes(operator_page), access.page_note(operator_page)
    engine = service.engine
    with gr.Blocks(title="Chinese TTS with a GPU profiler") as demo:
        gr.Markdown(f"## 中文语音合成 · Chinese text-to-speech with a live GPU profiler\nEngine **{engine.name}** · "
                    f"{engine.sample_rate} Hz · one resident model, dynamic batching across all users.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=360):
                _speech_column(h)
            with gr.Column(scale=2, min_width=340, elem_id="side-panel"):
                status = gr.Markdown(h.status(), elem_id="status")
                with gr.Tabs():
                    with gr.Tab("Live"):
                        plots = _live_tab(h, status, tunes, note)
                    with gr.Tab("Compare"):
                        _compare_tab(h, tunes, note)
                    with gr.Tab("Trace"):
                        _trace_tab(h, tunes, note)
        timer = gr.Timer(PANEL_REFRESH_S)
        for event in (timer.tick, demo.load):
            event(h.panel, None, [*plots, status], queue=False, show_progress="hidden", api_visibility="private")
    demo.queue(max_size=service.serve.queue_size, default_concurrency_limit=8)
    return demo


def _speech_column(h: Handlers) -> None:
    """Text, speaker, emotion, speed/pitch/volume, the player and the public /synthesize API."""
    engine, max_chars, limit = h.service.engine, h.service.serve.max_chars, h.service.serve.queue_size
    emotions = emotion_choices(engine, engine.default_speaker)
    text = gr.Textbox(label="Text", lines=6, max_length=max_chars, placeholder="输入中文文本……", elem_id="tts-text")
    counter = gr.Markdown(f"0 / {max_chars} characters", elem_id="char-counter")
    with gr.Row():
        speaker = gr.Dropdown(speaker_choices(engine), value=engine.default_speaker, label="Speaker", elem_id="speaker")
        emotion = gr.Dropdown(emotions, value=emotions[0], label="Emotion", interactive=len(emotions) > 1,
                              info=emotion_info(engine, engine.default_speaker), elem_id="emotion")
    with gr.Row():
        speed = gr.Slider(*SPEED_RANGE, value=1.0, step=0.05, label="Speed (x)", elem_id="speed")
        pitch = gr.Slider(*PITCH_RANGE_ST, value=0.0, step=0.5, label="Pitch (semitones)", elem_id="pitch")
        volume = gr.Slider(*VOLUME_RANGE_DB, value=0.0, step=1.0, label="Volume (dB)", elem_id="volume")
    speak = gr.Button("Synthesize", variant="primary", elem_id="synthesize")
    audio = gr.Audio(label="Speech", streaming=h.streaming, autoplay=True, interactive=False, elem_id="speech")
    timing = gr.Markdown(elem_id="timing")
    if not h.streaming:
        gr.Markdown("_ffmpeg not found: audio plays once the whole text is done (install ffmpeg to stream sentence by sentence)._")
    gr.Examples(EXAMPLES, inputs=text)
    with gr.Row(visible=False):  # the /synthesize API endpoint: whole text -> one WAV
        api_audio = gr.Audio(type="numpy", format="wav")
        api_button = gr.Button()
        # Optional API inputs (a component with an initial value is an optional parameter for gradio_client, so the
        # 3-argument call keeps working); unbounded Numbers, so a bad value gets the service's message with its range.
        api_controls = [gr.Number(value=1.0, label="speed"), gr.Number(value=0.0, label="pitch"), gr.Number(value=0.0, label="volume")]
    speaker.change(h.emotions, [speaker, emotion], emotion, queue=False, api_visibility="private")
    text.change(None, text, counter, js=COUNTER_JS.replace("MAX", str(max_chars)), queue=False)
    speak.click(h.speak, [text, speaker, emotion, speed, pitch, volume], [audio, timing], api_name="synthesize_stream",
                concurrency_limit=limit)
    api_button.click(h.synthesize, [text, speaker, emotion, *api_controls], api_audio, api_name="synthesize", concurrency_limit=limit)


def _live_tab(h: Handlers, status: gr.Markdown, tunes: bool = True, note: str | None = None) -> list[gr.Plot]:
    """Live plots and the live settings (disabled, with the reason, where this page may not tune); returns the plots
    the panel timer refreshes."""
    engine, settings = h.service.engine, h.service.settings
    plots = [gr.Plot(label="Memory", elem_id="memory-plot"), gr.Plot(label="Utilization"), gr.Plot(label="Batches"),
             gr.Plot(label="Stages per batch", elem_id="stage-plot"), gr.Plot(label="Share by stage", elem_id="stage-share")]
    if note:
        gr.Markdown(note, elem_id="settings-note")
    with gr.Group():
        fp16 = gr.Checkbox(value=settings.fp16, label="FP16 (CUDA only)", interactive=engine.fp16_supported and tunes, elem_id="fp16")
        batch = gr.Slider(1, min(64, engine.max_batch_size), value=settings.max_batch_size, step=1, label="Max batch size",
                          interactive=tunes, elem_id="max-batch")
        wait = gr.Slider(0, 200, value=settings.max_wait_ms, step=1, label="Max wait (ms)", interactive=tunes, elem_id="max-wait")
        clear = gr.Checkbox(value=settings.clear_cache, label="Clear CUDA cache after each batch", interactive=tunes,
                            elem_id="clear-cache")
        graphs = gr.Checkbox(value=settings.cuda_graphs, label="CUDA graphs (decoder replays captured graphs; CUDA only)",
                             interactive=engine.cuda_graphs_supported and tunes, elem_id="cuda-graphs")
        runtime = gr.Radio(list(RUNTIMES), value=settings.runtime, label="Vocoder runtime",
                           info="onnxruntime: the vocoder exported to ONNX (once, seconds) and run by ONNX Runtime",
                           interactive=bool(engine.onnx_parts) and tunes, elem_id="runtime")
    controls = [fp16, batch, wait, clear, graphs, runtime]
    wiring = dict(concurrency_id="settings", concurrency_limit=1, api_visibility="private")
    in_force = [status, fp16, graphs, runtime]  # a switch that fell back shows what runs (the status says why)
    for control in (fp16, clear, graphs, runtime):
        control.input(h.apply_settings, controls, in_force, **wiring)
    for control in (batch, wait):
        control.release(h.apply_settings, controls, in_force, **wiring)
    return plots


def _compare_tab(h: Handlers, tunes: bool = True, note: str | None = None) -> None:
    """The settings grid, its run button (disabled, with the reason, where this page may not tune), and the results as
    a table, charts and a CSV file."""
    if note:
        gr.Markdown(note)
    gr.Markdown("Runs the shipped workload under each setting on this resident service (other traffic skews it). Each row "
                "also gives its quality cost against an FP32, graphs-off reference of the same texts and seeds: "
                "mel-cepstral distortion (dB), share of items whose length changed, non-finite items.")
    on_off = ["on", "off"] if h.service.engine.fp16_supported else ["off"]
    grid_fp16 = gr.CheckboxGroup(["on", "off"], value=on_off, label="FP16", interactive=tunes)
    grid_batch = gr.CheckboxGroup(["1", "2", "4", "8", "16", "32"], value=["1", "4", "8"], label="Max batch size", interactive=tunes)
    grid_clear = gr.CheckboxGroup(["off", "on"], value=["off"], label="Cache clearing", interactive=tunes)
    graphs_on_off = ["on", "off"] if h.service.engine.cuda_graphs_supported else ["off"]
    grid_graphs = gr.CheckboxGroup(["on", "off"], value=graphs_on_off, label="CUDA graphs", interactive=tunes)
    grid_runtime = gr.CheckboxGroup(list(RUNTIMES), value=["torch"], label="Vocoder runtime", interactive=tunes)
    with gr.Row():
        concurrency = gr.Slider(1, 32, value=8, step=1, label="Concurrency", interactive=tunes)
        repeats = gr.Slider(1, 5, value=1, step=1, label="Repeats", interactive=tunes)
        n_texts = gr.Slider(1, len(h.workload), value=len(h.workload), step=1, label="Texts", interactive=tunes)
    with gr.Row():
        find_capacity = gr.Checkbox(value=False, label="Also find capacity: most clients (1, 2, 4 ... 64) within a p95 target",
                                    interactive=tunes)
        slo = gr.Number(value=default_slo_p95_s(h.service.engine.device), minimum=0.01, label="p95 target (s)", interactive=tunes)
    run = gr.Button("Run comparison", elem_id="run-compare", interactive=tunes)
    table = gr.Dataframe(label="Results", interactive=False)
    lat_plot, thr_plot, mem_plot, stage_plot, capacity_plot = gr.Plot(), gr.Plot(), gr.Plot(), gr.Plot(), gr.Plot()
    csv = gr.File(label="CSV")
    run.click(h.compare, [grid_fp16, grid_batch, grid_clear, concurrency, repeats, n_texts, grid_graphs, find_capacity, slo,
                          grid_runtime],
              [table, lat_plot, thr_plot, mem_plot, stage_plot, capacity_plot, csv], concurrency_limit=1, api_visibility="private")


def _trace_tab(h: Handlers, tunes: bool = True, note: str | None = None) -> None:
    """Record a torch.profiler trace of the next batches (an operator's action: it slows serving while it records):
    top operators by stage, launch figures, the trace file."""
    if note:
        gr.Markdown(note)
    gr.Markdown("Attaches torch.profiler to the batch worker for the next N batches (send requests meanwhile), then "
                "shows the top operators of each stage, the kernel launches and host op calls per decoded frame, and a "
                "Chrome/Perfetto trace to download (open it at ui.perfetto.dev). One recording at a time; it ends by "
                "itself after N batches or two minutes.")
    with gr.Row():
        n = gr.Number(value=DEFAULT_BATCHES, minimum=1, maximum=MAX_BATCHES, precision=0, label="Batches to trace")
        record = gr.Button("Record trace", elem_id="record-trace", interactive=tunes)
    summary = gr.Markdown(elem_id="trace-summary")
    table = gr.Dataframe(label="Top operators by stage", interactive=False, elem_id="trace-ops", max_height=1400,
                         show_search="filter")
    file = gr.File(label="Trace (.json.gz)", elem_id="trace-file")
    # Two at once reach the handler, so a second click is refused with the reason instead of waiting in line.
    record.click(h.record_trace, [n], [summary, table, file], concurrency_limit=2, concurrency_id="trace", api_visibility="private")


def _add_health_route(demo: gr.Blocks, service: TTSService) -> None:
    from fastapi.responses import JSONResponse

    app = demo.app
    app.add_api_route("/health", lambda: JSONResponse(service.health()), methods=["GET"], include_in_schema=False)
    routes = app.router.routes
    routes.insert(0, routes.pop())  # before Gradio's catch-all routes


def build_pages(service: TTSService, monitor: Monitor, access: Access,
                streaming: bool | None = None) -> tuple[gr.Blocks, gr.Blocks | None]:
    """The page at / and, on a shared server with an operator login, the operator's page (for launch_ui to mount)."""
    page = build_ui(service, monitor, streaming, access)
    return page, build_ui(service, monitor, streaming, access, operator_page=True) if access.operator_page else None


def _mount_operator_page(demo: gr.Blocks, page: gr.Blocks, admin: tuple[str, str], local_url: str) -> None:
    """Serve the operator's page at OPERATOR_PATH of the launched server, behind its own Gradio login."""
    import httpx

    gr.mount_gradio_app(demo.app, page, OPERATOR_PATH, auth=[admin], ssr_mode=False,
                        auth_message="Operator login: this page changes the server's settings for every user.")
    # Gradio starts a mounted app's queue from the parent's start-up, which has already run: start it as launch() does.
    httpx.get(f"{local_url.rstrip('/')}{OPERATOR_PATH}/gradio_api/startup-events", timeout=60).raise_for_status()


def launch_ui(demo: gr.Blocks, service: TTSService, block: bool = True, operator_page: gr.Blocks | None = None) -> str:
    """Start the server (and a share link if asked); return the local URL. Share failures keep serving locally.

    operator_page: the operator's page (build_pages), mounted at OPERATOR_PATH behind the --admin login.
    """
    serve = service.serve
    if serve.share and serve.auth is None:
        print("WARNING: --share without --auth makes this app, and your GPU, usable by anyone with the link. "
              "Add --auth USER:PASSWORD.", file=sys.stderr)
    _, local_url, share_url = demo.launch(
        server_name=serve.host, server_port=serve.port, share=serve.share, auth=serve.auth, prevent_thread_lock=True,
        max_threads=max(40, serve.queue_size + 8), show_error=True, quiet=True,
        ssr_mode=False if operator_page is not None else None,  # SSR puts a Node proxy in front: untested with a mounted page
    )
    _add_health_route(demo, service)
    print(f"Running on {local_url}  (health: {local_url.rstrip('/')}/health)")
    if operator_page is not None:
        _mount_operator_page(demo, operator_page, serve.admin, local_url)
        print(f"Operator page: {local_url.rstrip('/')}{OPERATOR_PATH}/ (log in as {serve.admin[0]!r})")
    if serve.share:
        if share_url:
            print(f"Public share link: {share_url}" + (f"  (operator: {share_url.rstrip('/')}{OPERATOR_PATH}/)" if operator_page else ""))
        else:
            print("No share link: Gradio could not reach its share server (no internet here?). The app keeps serving locally.",
                  file=sys.stderr)
    if block:
        demo.block_thread()
    return local_url
