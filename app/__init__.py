"""Chinese text-to-speech demo app: engines, batching service and Gradio UI."""
