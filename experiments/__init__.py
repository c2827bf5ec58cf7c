"""Studies built on rnn_jax's public API, one module each, run as ``python -m experiments.NAME [--quick] [--out DIR]``.

Each module's docstring states its question, the exact command, and the expected runtime and result; each run
writes ``results.json``, PNG figures and ``summary.md`` into ``--out`` (``experiments/results/NAME`` by default).
"""
