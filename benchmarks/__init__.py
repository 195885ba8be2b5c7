"""The maintainers' benchmarks: the timing benchmark and the GPU device check (``python -m benchmarks``).
Not packaged: nothing under ``advcl_plugin/`` imports them."""
