"""Recurrent cells. Each module holds a Params NamedTuple, ``init`` and a carry-first ``step``."""

from rnn_jax.cells import elman

__all__ = ["elman"]
