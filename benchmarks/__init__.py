"""Benchmarks of jaxnorm's layers against flax.linen and PyTorch on the CPU.

Run ``python -m benchmarks`` in a clone, or ``jaxnorm-benchmarks`` after installing
(``pip install "jaxnorm[experiments]"``); ``benchmarks/RESULTS.md`` holds a full run.
"""
