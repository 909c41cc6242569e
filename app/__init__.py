"""Chinese text-to-speech demo app. Layers, top down (imports only point down):

- app.web: Gradio page and handlers (wiring over the service and the profiler runtime)
- profiling (outside app/): the profiler runtime (monitor, plots, compare, loadgen)
- core: app.service (TTSService), app.batcher, app.engines (one contract in app.engines.base), app.text, app.audio,
  app.settings, app.memory, app.errors
"""
