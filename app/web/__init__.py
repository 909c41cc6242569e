"""The web layer: ui.py wires Gradio components (nothing else); handlers.py holds what they do, as plain functions."""
