"""Chinese text-to-speech demo app. Layers, top down (imports only point down):

- app.web: Gradio page and handlers (wiring over the service and the profiler runtime)
- app.cluster: replicas on Ray Serve and the front's client with the service's surface (only with --ray-replicas)
- profiling (outside app/): the profiler runtime (monitor, plots, compare, quality, loadgen)
- core: app.service (TTSService), app.postprocess and app.prosody (after the batch), app.batcher, app.text,
  app.audio, app.settings, app.memory, app.errors
- app.engines: the one contract (app.engines.base) and the engines behind it
"""
