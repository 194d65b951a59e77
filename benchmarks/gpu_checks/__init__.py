"""The checks of ``benchmarks/gpu_check.py``, one module each. What they share (the set-up, timing, the tiny
data sets) is in :mod:`.common`, which makes the test suite's helpers (``tests/fakes.py``) importable."""
