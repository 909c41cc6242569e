"""The profiler runtime the app uses: monitor (NVML + allocator sampler), plots, compare (settings grid), loadgen.

Benchmarks and GPU checks live in profiling/bench/; nothing here or in app/ imports them.
"""
