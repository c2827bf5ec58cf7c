"""Tasks: every task behind one small interface (`Task`): batches, loss, metrics, trivial baseline."""

from __future__ import annotations

from rnn_jax.config import TaskConfig
from rnn_jax.tasks.base import Batch, Task, loss
from rnn_jax.tasks.synthetic import Adding, TemporalOrder, TemporalXOR

TASKS = ("adding", "xor", "temporal_order")


def make(config: TaskConfig) -> Task:
    """The task named by ``config.task``.

    Raises:
      ValueError: for an unknown task, or an option the task does not take.
    """
    if config.task == "adding":
        return Adding(seq_len=config.seq_len, min_len=config.min_len)
    if config.task == "xor":
        if config.min_len is not None:
            raise ValueError("min_len: the xor task has fixed-length streams; drop --min-len")
        return TemporalXOR(seq_len=config.seq_len)
    if config.task == "temporal_order":
        if config.min_len is not None:
            raise ValueError("min_len: the temporal_order task has fixed-length sequences; drop --min-len")
        return TemporalOrder(seq_len=config.seq_len)
    raise ValueError(f"task: expected one of {list(TASKS)}, got {config.task!r}")


__all__ = ["TASKS", "Adding", "Batch", "Task", "TemporalOrder", "TemporalXOR", "loss", "make"]
