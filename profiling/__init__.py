"""Profiling: GPU/process monitor, per-request records, settings comparison and plots."""
