"""Command line: run the app, or synthesize one text to a WAV file (--say) without loading the web stack."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import warnings

from app.errors import EngineUnavailableError, SynthesisError, TTSInputError
from app.settings import (ENGINE_NAMES, PITCH_RANGE_ST, RUNTIMES, SPEED_RANGE, VOLUME_RANGE_DB, BatchSettings, EngineSettings,
                          ServeSettings, check_controls)

log = logging.getLogger("launch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Chinese text-to-speech demo with a GPU profiler (Gradio).")
    one = p.add_argument_group("one-shot use (no web server)")
    one.add_argument("--say", metavar="TEXT", help="synthesize TEXT and write --out, then exit")
    one.add_argument("--out", default="out.wav", help="WAV file for --say (16-bit PCM at the engine's rate)")
    one.add_argument("--list-speakers", action="store_true", help="print the engine's speakers and emotions, then exit")
    one.add_argument("--speaker", help="speaker for --say (default: the engine's best voice)")
    one.add_argument("--emotion", default="neutral", help="emotion for --say")
    one.add_argument("--speed", type=float, default=1.0, help=f"tempo factor for --say ({SPEED_RANGE[0]:g} to {SPEED_RANGE[1]:g})")
    one.add_argument("--pitch", type=float, default=0.0,
                     help=f"pitch shift for --say, semitones ({PITCH_RANGE_ST[0]:g} to {PITCH_RANGE_ST[1]:+g})")
    one.add_argument("--volume", type=float, default=0.0,
                     help=f"loudness change for --say, dB ({VOLUME_RANGE_DB[0]:g} to {VOLUME_RANGE_DB[1]:+g})")
    one.add_argument("--seed", type=int, help="random seed for --say (default: derived from the text)")
    eng = p.add_argument_group("engine")
    eng.add_argument("--engine", default="embedded", choices=ENGINE_NAMES, help="embedded (offline default), sambert or modelscope")
    eng.add_argument("--model", help="model folder or ModelScope id (sambert, modelscope); an id is downloaded once")
    eng.add_argument("--emotions", action="append", default=[], metavar="VOICE=EMOTION[,EMOTION...]",
                     help="emotions a Sambert voice was trained on, when its folder does not say "
                          "(repeatable or ';'-separated), e.g. zhitian_emo=happy,sad")
    eng.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    eng.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True, help="FP16 on CUDA (FP32 elsewhere)")
    b = p.add_argument_group("batching (also live in the app)")
    b.add_argument("--max-batch-size", type=int, default=BatchSettings.max_batch_size)
    b.add_argument("--max-wait-ms", type=float, default=BatchSettings.max_wait_ms)
    b.add_argument("--clear-cache", action=argparse.BooleanOptionalAction, default=False, help="empty the CUDA cache after every batch")
    b.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=BatchSettings.cuda_graphs,
                   help="decode by replaying CUDA graphs captured at start-up (CUDA only; off: the dynamic loop)")
    b.add_argument("--runtime", choices=RUNTIMES, default=BatchSettings.runtime,
                   help="what runs the vocoder: torch, or onnxruntime (exported once; pip install -r requirements-onnx.txt)")
    s = p.add_argument_group("serving")
    s.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="address to bind (0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    s.add_argument("--share", action="store_true", help="ask Gradio for a public share link")
    s.add_argument("--auth", metavar="USER:PASSWORD", help="protect the page with a login")
    s.add_argument("--admin", metavar="USER:PASSWORD", default=os.environ.get("TTS_ADMIN"),
                   help="the operator's login (default: $TTS_ADMIN): on a shared server (--share, a non-loopback --host, "
                        "a Space) only the operator, at /operator, may change settings or run comparisons")
    s.add_argument("--max-queued-per-client", type=int, default=ServeSettings.max_queued_per_client, metavar="N",
                   help="most sentences one page session, user or API client may have waiting (0: no cap); batches are "
                        "shared round-robin between callers")
    s.add_argument("--queue-size", type=int, default=ServeSettings.queue_size, help="most sentences waiting; beyond it: busy")
    s.add_argument("--max-chars", type=int, default=ServeSettings.max_chars, help="longest text one request may carry")
    s.add_argument("--post-workers", type=int, default=ServeSettings.post_workers,
                   help="CPU threads rendering emotion/speed/pitch/volume after the model (more on a GPU box with spare cores)")
    s.add_argument("--no-warmup", action="store_true", help="skip the start-up warm-up (faster start, slower first request)")
    r = p.add_argument_group("replicas on Ray Serve (pip install -r requirements-ray.txt); without --ray-replicas Ray is not used")
    r.add_argument("--ray-replicas", type=int, metavar="N", help="serve through N replicas, each with its own engine and batcher")
    r.add_argument("--ray-address", metavar="auto|HOST:PORT", help="join a running Ray cluster (default: start a local one)")
    r.add_argument("--gpus-per-replica", type=float, metavar="F", help="GPUs per replica; 0.5 puts two on one GPU (default: 1 with GPUs, else 0)")
    r.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="F", help="CPUs per replica, also its torch thread count")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> tuple[EngineSettings, BatchSettings, ServeSettings]:
    """Check every option once, here; a bad value exits with a message naming it."""
    auth = _login(args.auth, "--auth")
    admin = _login(args.admin, "--admin (or TTS_ADMIN)")
    emotions = ()
    if args.emotions:
        from app.engines.sambert.emotions import parse_emotions_option

        emotions = parse_emotions_option(args.emotions)
    engine = EngineSettings(name=args.engine, model=args.model, device=args.device, emotions=emotions)
    batch = BatchSettings(fp16=args.fp16, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, clear_cache=args.clear_cache,
                          cuda_graphs=args.cuda_graphs, runtime=args.runtime)
    serve = ServeSettings(queue_size=args.queue_size, max_chars=args.max_chars, host=args.host, port=args.port, share=args.share, auth=auth,
                          post_workers=args.post_workers, admin=admin, max_queued_per_client=args.max_queued_per_client)
    return engine, batch, serve


def _login(value: str | None, flag: str) -> tuple[str, str] | None:
    """USER:PASSWORD -> (user, password); None stays None."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError(f"{flag} must look like USER:PASSWORD")
    return user, password


def cluster_from(args: argparse.Namespace):
    """ClusterSettings for --ray-replicas, None without it (then nothing imports ray)."""
    if args.ray_replicas is None:
        if args.ray_address or args.gpus_per_replica is not None:
            raise ValueError("--ray-address and --gpus-per-replica need --ray-replicas N")
        return None
    from app.cluster.config import ClusterSettings

    return ClusterSettings(replicas=args.ray_replicas, address=args.ray_address, gpus_per_replica=args.gpus_per_replica,
                           cpus_per_replica=args.cpus_per_replica, max_queued_requests=args.queue_size, full_warmup=not args.no_warmup)


def load_engine(settings: EngineSettings, fp16: bool):
    """Build and load the engine once; it stays resident for the life of the process."""
    from app.engines import create_engine

    engine = create_engine(settings)
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.load(settings.device, fp16=fp16)
    for w in caught:
        print(f"note: {w.message}", file=sys.stderr)
    log.info("%s engine loaded on %s (%s) in %.1f s", engine.name, engine.device, engine.precision, time.monotonic() - t0)
    return engine


def say(args: argparse.Namespace, engine_settings: EngineSettings, batch: BatchSettings, serve: ServeSettings) -> None:
    """One-shot synthesis through the same service path as the app, without warm-up or the web stack: fast cold start."""
    from app.audio import write_wav
    from app.service import TTSService

    check_controls(args.speed, args.pitch, args.volume)  # before the engine loads: a typo costs no wait
    engine = load_engine(engine_settings, batch.fp16)
    one_shot = dataclasses.replace(batch, cuda_graphs=False)  # one text: capturing every bucket would cost more than it saves
    with TTSService(engine, one_shot, serve).start(warmup=False) as service:
        result = service.submit(args.say, args.speaker or engine.default_speaker, args.emotion, seed=args.seed,
                                speed=args.speed, pitch=args.pitch, volume=args.volume)
    write_wav(args.out, result.audio, result.sample_rate)
    print(f"wrote {args.out}: {len(result.audio) / result.sample_rate:.2f} s at {result.sample_rate} Hz, "
          f"{result.timings.sentences} sentence(s), synthesized in {result.timings.total_s:.2f} s ({engine.device}, {engine.precision})")


def list_speakers(engine_settings: EngineSettings) -> None:
    from app.engines import create_engine

    engine = create_engine(engine_settings)
    if not engine.speakers:  # engines that read their voices from a model folder need loading first
        engine.load(engine_settings.device, fp16=False)
    for name in engine.speakers:
        print(name + ("  (experimental)" if name in engine.experimental_speakers else "")
              + ("  [default]" if name == engine.default_speaker else ""))
    print(f"emotions ({engine.emotion_kind}): " + ", ".join(engine.emotions))


def access_for(serve: ServeSettings):
    """Who may tune this server (app.web.roles.Access), said once at start-up."""
    from app.web.roles import HOW_TO_ENABLE, Access

    access = Access.of(serve)
    if access.shared and access.operator is None:
        print(f"note: shared server without an operator login: settings and comparison are read-only for everyone; to "
              f"enable them, {HOW_TO_ENABLE}.", file=sys.stderr)
    elif not access.shared and serve.admin:
        print("note: --admin/TTS_ADMIN has no effect on a local server (loopback host, no --share): whoever opens the "
              "page is the operator.", file=sys.stderr)
    return access


def serve_app(engine_settings: EngineSettings, batch: BatchSettings, serve: ServeSettings, warmup: bool) -> None:
    from app.service import TTSService
    from app.web.ui import build_pages, launch_ui
    from profiling.monitor import Monitor

    engine = load_engine(engine_settings, batch.fp16)
    service = TTSService(engine, batch, serve).start(warmup=False)
    log.info("decoder: %s", engine.cuda_graphs_detail or "dynamic loop")
    log.info("vocoder runtime: %s", engine.runtime_detail or "torch")
    if warmup:
        log.info("warming up every speaker and a few batch shapes ...")
        log.info("warm-up done in %.1f s", service.warmup())
    monitor = Monitor(extra=service.stats)
    monitor.start()
    demo, operator_page = build_pages(service, monitor, access_for(serve))
    launch_ui(demo, service, operator_page=operator_page)


def serve_replicas(engine_settings: EngineSettings, batch: BatchSettings, serve: ServeSettings, warmup: bool, cluster) -> None:
    """The same UI and API as serve_app, in front of replicas on Ray Serve; they are deleted when the front stops."""
    from app.cluster.deploy import shutdown, start_front
    from app.web.ui import build_pages, launch_ui

    client, monitor = start_front(engine_settings, batch, serve, cluster, warmup)
    try:
        demo, operator_page = build_pages(client, monitor, access_for(serve))
        launch_ui(demo, client, operator_page=operator_page)
    except KeyboardInterrupt:  # Ray's driver sees the Ctrl-C too: stop quietly, then delete the replicas
        pass
    finally:
        client.close()
        shutdown(cluster)


def install_weights_on_spaces() -> None:
    """Hugging Face Spaces install requirements.txt only; ttskit (the weights' carrier) needs --no-deps."""
    import importlib.util
    import subprocess

    if os.environ.get("SPACE_ID") and importlib.util.find_spec("ttskit") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "ttskit==0.3.8"], check=True)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        engine_settings, batch, serve = settings_from(args)
        cluster = cluster_from(args)
        if engine_settings.name == "embedded":
            install_weights_on_spaces()
        if args.list_speakers:
            list_speakers(engine_settings)
        elif args.say is not None:
            say(args, engine_settings, batch, serve)
        elif cluster is not None:
            serve_replicas(engine_settings, batch, serve, warmup=not args.no_warmup, cluster=cluster)
        else:
            serve_app(engine_settings, batch, serve, warmup=not args.no_warmup)
    except (EngineUnavailableError, TTSInputError, SynthesisError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
