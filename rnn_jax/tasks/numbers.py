"""Spelled-out numbers to digits: a generated translation-like task for the encoder-decoder (`rnn_jax.seq2seq`).

The source is an English number name as word tokens, the target its decimal digits followed by <end>:

    "three hundred forty two"       ->  3 4 2 <end>
    "twelve thousand five"          ->  1 2 0 0 5 <end>
    "zero"                          ->  0 <end>

(no "and", no hyphens; 31 source words with <pad>). Source and target lengths differ and vary from
number to number; the output is not a word-by-word rewrite (``"forty"`` is one digit, ``"hundred"``
none, a missing tens word a ``0``), so the model has to read the whole name before writing.

Every table is built once at construction, in NumPy: the token ids of every number in [0, max_value],
padded with <pad>, and their lengths. A batch draws numbers uniformly from the training numbers and
gathers their rows, so it is a pure function of its key and runs under `jax.jit`.

Held-out numbers: a fixed, seed-independent subset (20 % of [0, max_value], at most 2000 numbers,
chosen by a NumPy permutation with a fixed seed) is never drawn in training. Half of it is the
validation split, half the test split (`eval_batch`), so exact match there measures generalisation
to numbers the model has never seen, not memorisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.seq2seq import END, GO, PAD, Seq2SeqBatch, sequence_metrics
from rnn_jax.tasks.base import check_batch_arguments

ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")  # 20, 30, .., 90
SOURCE_VOCABULARY = ("<pad>", *ONES, *TENS, "hundred", "thousand")  # id 0 = PAD
TARGET_VOCABULARY = ("<pad>", "<go>", "<end>", *"0123456789")  # ids PAD, GO, END, then digit k at 3 + k
MAX_VALUE = 999_999
HELD_OUT_FRACTION = 0.2
MAX_HELD_OUT = 2000
SPLIT_SEED = 20140908  # the held-out numbers' permutation; fixed, so every run holds out the same numbers
assert TARGET_VOCABULARY.index("<pad>") == PAD and TARGET_VOCABULARY.index("<go>") == GO
assert TARGET_VOCABULARY.index("<end>") == END and SOURCE_VOCABULARY.index("<pad>") == PAD


def _below_thousand(n: int) -> list[str]:
    """The words of 1 <= n <= 999."""
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(TENS[tens - 2])
        if ones:
            words.append(ONES[ones])
    elif rest:
        words.append(ONES[rest])
    return words


def spell(n: int) -> list[str]:
    """The English name of 0 <= n <= 999999 as a list of words (``342 -> ["three", "hundred", "forty", "two"]``)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 0 <= n <= MAX_VALUE:
        raise ValueError(f"n: expected an integer in [0, {MAX_VALUE}], got {n!r}")
    if n == 0:
        return ["zero"]
    thousands, rest = divmod(int(n), 1000)
    return ([*_below_thousand(thousands), "thousand"] if thousands else []) + (_below_thousand(rest) if rest else [])


@dataclass(frozen=True)
class Numbers:
    """Translate an English number name into its digits (sequence to sequence, exact match).

    Batches are `rnn_jax.seq2seq.Seq2SeqBatch`: source [S, B] word ids, target [T, B] digit ids
    ending with <end>, each with its lengths; S and T are the longest name and digit string in
    [0, max_value] (4 and 4 for 999). With ``reverse_source`` each name is fed last word first
    (Sutskever et al. 2014's trick; the padding stays at the end).

    Metrics, of greedy decoding on the held-out numbers: token accuracy and exact match (a number
    counts only if every digit and the <end> are right). The trivial baseline ignores the source:
    at each target position it predicts the most frequent training token there (with add-one
    smoothed position-wise frequencies for the loss), scored on the test split.

    References:
      Sutskever, I., Vinyals, O. & Le, Q. V. (2014). Sequence to sequence learning with neural
      networks. NeurIPS.
    """

    max_value: int = 999
    reverse_source: bool = False
    name: str = "numbers"
    loss: str = "cross_entropy"
    seq2seq: bool = True  # batches are Seq2SeqBatch; train.py trains it with rnn_jax.seq2seq
    input_size: int = len(SOURCE_VOCABULARY)  # V_s
    output_size: int = len(TARGET_VOCABULARY)  # V_t

    def __post_init__(self):
        value = self.max_value
        if isinstance(value, bool) or not isinstance(value, int) or not 9 <= value <= MAX_VALUE:
            raise ValueError(f"max_value: expected an integer in [9, {MAX_VALUE}], got {value!r}")
        if not isinstance(self.reverse_source, bool):
            raise TypeError(f"reverse_source: expected a bool, got {self.reverse_source!r}")
        count = value + 1
        source, source_lengths = _name_table(count)
        if self.reverse_source:
            steps = np.arange(source.shape[1])[None, :]
            index = np.where(steps < source_lengths[:, None], source_lengths[:, None] - 1 - steps, steps)
            source = np.take_along_axis(source, index, axis=1)
        target, target_lengths = _digit_table(count)
        held = min(round(HELD_OUT_FRACTION * count), MAX_HELD_OUT)
        order = np.random.default_rng(SPLIT_SEED).permutation(count)
        tables = {
            "source": source,
            "source_lengths": source_lengths,
            "target": target,
            "target_lengths": target_lengths,
        }
        splits = {
            "train": np.sort(order[held:]).astype(np.int32),
            "validation": np.sort(order[: held // 2]).astype(np.int32),
            "test": np.sort(order[held // 2 : held]).astype(np.int32),
        }
        object.__setattr__(self, "_tables", tables)
        object.__setattr__(self, "_splits", splits)
        object.__setattr__(self, "_device_tables", {k: jnp.asarray(v) for k, v in tables.items()})
        object.__setattr__(self, "_train_numbers", jnp.asarray(splits["train"]))

    def numbers(self, split: str) -> np.ndarray:
        """The numbers of ``split`` ("train", "validation" or "test"), sorted, [N] int32 (disjoint splits)."""
        if split not in self._splits:
            raise ValueError(f"split: expected 'train', 'validation' or 'test', got {split!r}")
        return self._splits[split].copy()

    def rows(self, numbers) -> Seq2SeqBatch:
        """The batch of the given numbers ([B] ints in [0, max_value]), gathered from the tables (jit-able)."""
        table = self._device_tables
        numbers = jnp.asarray(numbers, jnp.int32)
        return Seq2SeqBatch(
            source=table["source"][numbers].T.astype(jnp.int32),
            source_lengths=table["source_lengths"][numbers],
            target=table["target"][numbers].T.astype(jnp.int32),
            target_lengths=table["target_lengths"][numbers],
        )

    def batch(self, key: jax.Array, batch_size: int, dtype: jnp.dtype = jnp.float32) -> Seq2SeqBatch:
        """B numbers drawn uniformly (with replacement) from the training numbers; ``dtype`` is unused (tokens)."""
        batch_size = check_batch_arguments(key, batch_size)
        del dtype
        index = jax.random.randint(key, (batch_size,), 0, self._train_numbers.shape[0], jnp.int32)
        return self.rows(self._train_numbers[index])

    def eval_batch(self, split: str, dtype: jnp.dtype = jnp.float32) -> Seq2SeqBatch:
        """Every held-out number of the "validation" or "test" split, as one batch."""
        del dtype
        if split not in ("validation", "test"):
            raise ValueError(f"split: expected 'validation' or 'test', got {split!r}")
        return self.rows(self._splits[split])

    def source_text(self, tokens) -> str:
        """The words of source token ids (PAD dropped), in the order fed to the encoder."""
        return " ".join(SOURCE_VOCABULARY[int(t)] for t in np.asarray(tokens) if int(t) != PAD)

    def target_text(self, tokens) -> str:
        """The digits of target token ids up to the first <end> (other special tokens shown as <...>)."""
        text = []
        for t in np.asarray(tokens):
            if int(t) == END:
                break
            text.append(TARGET_VOCABULARY[int(t)])
        return "".join(text)

    def metrics(self, predicted: jax.Array, batch: Seq2SeqBatch) -> dict[str, jax.Array]:
        """Token accuracy and exact match of ``predicted`` tokens [L >= T, B] (`seq2seq.sequence_metrics`)."""
        return sequence_metrics(predicted, batch.target, batch.target_lengths)

    def baseline(self) -> dict[str, float]:
        """The source-blind predictor: the most frequent training token at each target position, on the test split.

        Returns:
          {"loss": its cross-entropy (add-one smoothed frequencies), "token_accuracy", "exact_match"}.
        """
        target, lengths = self._tables["target"], self._tables["target_lengths"]
        train, test = self._splits["train"], self._splits["test"]
        num_steps, vocab = target.shape[1], len(TARGET_VOCABULARY)
        counts = np.ones((num_steps, vocab))  # add-one smoothing
        for t in range(num_steps):
            valid = lengths[train] > t
            np.add.at(counts[t], target[train][valid, t], 1.0)
        log_p = np.log(counts / counts.sum(axis=1, keepdims=True))
        mode = counts.argmax(axis=1)  # [T]
        valid = np.arange(num_steps)[None, :] < lengths[test][:, None]  # [N, T]
        truth = target[test]
        nll = -log_p[np.arange(num_steps)[None, :], truth]
        right = (truth == mode[None, :]) | ~valid
        return {
            "loss": float(nll[valid].mean()),
            "token_accuracy": float((right & valid).sum() / valid.sum()),
            "exact_match": float(right.all(axis=1).mean()),
        }


def _pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The rows padded with PAD to the longest, [N, max length] uint8, and their lengths [N] int32."""
    table = np.full((len(rows), max(len(r) for r in rows)), PAD, np.uint8)
    for i, row in enumerate(rows):
        table[i, : len(row)] = row
    return table, np.array([len(r) for r in rows], np.int32)


def _name_table(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The source ids of the names of 0 .. count - 1, [count, S] uint8 padded with PAD, and their lengths.

    Below 1000 each name comes from `spell`; above, the name of n is that of n // 1000, "thousand",
    and that of n % 1000 when it is not 0, put together in NumPy.
    """
    small, small_lengths = _pad([[SOURCE_VOCABULARY.index(w) for w in spell(n)] for n in range(min(count, 1000))])
    if count <= 1000:
        return small, small_lengths
    n = np.arange(count)
    high, low = n // 1000, n % 1000
    high_len = np.where(high > 0, small_lengths[high], 0)  # words of n // 1000 (none below 1000)
    low_len = np.where((low > 0) | (n == 0), small_lengths[low], 0)  # words of n % 1000 ("zero" only for 0)
    thousand = (high > 0).astype(np.int32)
    lengths = (high_len + thousand + low_len).astype(np.int32)
    width = int(lengths.max())
    pos = np.arange(width)[None, :]  # [1, S]
    in_high = pos < high_len[:, None]
    at_thousand = (pos == high_len[:, None]) & (thousand[:, None] == 1)
    low_pos = np.clip(pos - high_len[:, None] - thousand[:, None], 0, small.shape[1] - 1)
    in_low = (pos >= (high_len + thousand)[:, None]) & (pos < lengths[:, None])
    table = np.full((count, width), PAD, np.uint8)
    table = np.where(in_high, small[high[:, None], np.clip(pos, 0, small.shape[1] - 1)], table)
    table = np.where(at_thousand, SOURCE_VOCABULARY.index("thousand"), table)
    table = np.where(in_low, small[low[:, None], low_pos], table)
    return table.astype(np.uint8), lengths


def _digit_table(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The target ids of 0 .. count - 1 (digit k is 3 + k, then END), [count, T] uint8 padded with PAD, and lengths."""
    n = np.arange(count)
    digits = np.ones(count, np.int32)
    while (n >= 10**digits).any():
        digits += n >= 10**digits
    width = int(digits.max()) + 1
    pos = np.arange(width)[None, :]
    power = np.clip(digits[:, None] - 1 - pos, 0, None)  # the digit at position p has place value 10 ** power
    table = np.where(pos < digits[:, None], 3 + (n[:, None] // 10**power) % 10, PAD)
    table = np.where(pos == digits[:, None], END, table)
    return table.astype(np.uint8), (digits + 1).astype(np.int32)
