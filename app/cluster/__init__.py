"""Replicas on Ray Serve: one TTSService per replica, one front (the Gradio app) that reaches them by handle.

Only `deploy` and `client` import ray; the single-process path never imports this package.
"""
