"""Benchmarks and GPU checks: scripts run by hand or by gpu_suite.sh; they print tables. Nothing in the runtime imports them."""
