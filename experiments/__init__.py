"""Studies built on rnn_jax's public API, one module each, run as ``python -m experiments.NAME [--quick] [--out DIR]``.

Each module's docstring states its question, the exact command, and the expected runtime and result (``--help``
shows the command and the runtime); each run writes ``results.json`` and ``summary.md``, and the studies of
gradients and real data PNG figures, into ``--out`` (``experiments/results/NAME`` in the repository by default).
"""
