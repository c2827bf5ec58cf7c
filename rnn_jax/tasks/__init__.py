"""Tasks: every task behind one small interface (`Task`): batches, loss, metrics, trivial baseline."""

from __future__ import annotations

from rnn_jax.config import TaskConfig
from rnn_jax.seq2seq import Seq2SeqBatch
from rnn_jax.tasks.base import Batch, Task, features, loss
from rnn_jax.tasks.numbers import Numbers
from rnn_jax.tasks.real import JapaneseVowels, Shakespeare, Sunspots
from rnn_jax.tasks.synthetic import Adding, TemporalOrder, TemporalXOR

TASKS = ("adding", "xor", "temporal_order", "numbers", "shakespeare", "sunspots", "japanese-vowels")


def make(config: TaskConfig) -> Task:
    """The task named by ``config.task``.

    Raises:
      ValueError: for an unknown task, or an option the task does not take.
    """
    for name, default in (("max_value", 999), ("reverse_source", False)):
        if config.task != "numbers" and getattr(config, name) != default:
            raise ValueError(f"{name}: an option of the numbers task only; drop it for {config.task}")
    if config.task == "adding":
        return Adding(seq_len=config.seq_len, min_len=config.min_len)
    if config.task == "xor":
        if config.min_len is not None:
            raise ValueError("min_len: the xor task has fixed-length streams; drop --min-len")
        return TemporalXOR(seq_len=config.seq_len)
    if config.min_len is not None:
        raise ValueError(f"min_len: only the adding task draws lengths; {config.task} has its own")
    if config.task in ("numbers", "japanese-vowels") and config.seq_len != TaskConfig().seq_len:
        raise ValueError(  # it was ignored without a word
            f"seq_len: the {config.task} task's sequences have their own lengths; drop --seq-len"
        )
    if config.task == "numbers":
        return Numbers(max_value=config.max_value, reverse_source=config.reverse_source)
    if config.task == "temporal_order":
        return TemporalOrder(seq_len=config.seq_len)
    if config.task == "shakespeare":
        return Shakespeare(seq_len=config.seq_len)
    if config.task == "sunspots":
        return Sunspots(seq_len=config.seq_len)
    if config.task == "japanese-vowels":
        return JapaneseVowels()
    raise ValueError(f"task: expected one of {list(TASKS)}, got {config.task!r}")


def describe(config: TaskConfig) -> str:
    """The task's sequence sizes as the run headers print them: ``T=50, B=64``, or what stands for T where
    ``seq_len`` is not used (the numbers task's range, the Japanese vowels' own lengths) or is a range (adding with
    ``min_len``)."""
    if config.task == "numbers":
        order = ", source reversed" if config.reverse_source else ""
        return f"numbers 0..{config.max_value}{order}, B={config.batch_size}"
    if config.task == "japanese-vowels":
        return f"the recorded lengths, B={config.batch_size}"
    if config.min_len is not None:
        return f"T={config.min_len}..{config.seq_len}, B={config.batch_size}"
    return f"T={config.seq_len}, B={config.batch_size}"


__all__ = [
    "TASKS", "Adding", "Batch", "JapaneseVowels", "Numbers", "Seq2SeqBatch", "Shakespeare", "Sunspots", "Task",
    "TemporalOrder", "TemporalXOR", "describe", "features", "loss", "make",
]  # fmt: skip
