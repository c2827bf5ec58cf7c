"""Tasks on real data: character-level Shakespeare, sunspot forecasting, Japanese vowels.

Besides the `Task` interface, each has ``eval_batch(split, dtype)``: the whole validation or
test split as one batch, which the train loop evaluates (validation periodically, test at the
end). Data come from `rnn_jax.tasks.datasets`; nothing is downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import _checks
from rnn_jax.tasks import datasets
from rnn_jax.tasks.base import Batch, check_batch_arguments


def _split_name(split: str) -> str:
    if split not in ("validation", "test"):
        raise ValueError(f"split: expected 'validation' or 'test', got {split!r}")
    return split


def _last_step_mask(lengths: jax.Array, num_steps: int) -> jax.Array:
    return jnp.arange(num_steps, dtype=lengths.dtype)[:, None] == lengths[None, :] - 1


# ------------------------------------------------------------------ character-level language modelling


@dataclass(frozen=True)
class Shakespeare:
    """Character-level language modelling on Shakespeare's plays: predict the next character.

    Inputs are character indices, one-hot encoded by `featurize`; outputs are logits over the
    vocabulary (every character of the 38 plays, sorted). Trained with truncated BPTT over
    ``B`` contiguous streams of the training plays (``--tbptt-k1``), or on random windows of
    ``seq_len`` characters; evaluated on the validation and test plays, read as 8 contiguous
    streams each, in bits per character. The trivial baseline is the unigram entropy of the
    training text (a model that ignores the context).

    References:
      Karpathy, A. (2015). The unreasonable effectiveness of recurrent neural networks (char-rnn).
    """

    seq_len: int = 100
    name: str = "shakespeare"
    loss: str = "cross_entropy"
    eval_streams: int = 8
    text: datasets.Text = field(default=None, repr=False)  # loaded when not given
    vocabulary: str = field(default="", repr=False)

    def __post_init__(self):
        _checks.positive_int("seq_len", self.seq_len)
        text = self.text if self.text is not None else datasets.shakespeare()
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "vocabulary", "".join(sorted(set(text.train + text.validation + text.test))))
        object.__setattr__(self, "_tokens", {s: self.encode(getattr(text, s)) for s in ("train", "validation", "test")})
        longest = len(self._tokens["train"]) - 2  # a window is seq_len + 1 characters, drawn from [0, N - T - 1)
        if self.seq_len > longest:  # was XLA's "Slice size at index 0 in gather op is out of range"
            raise ValueError(f"seq_len: at most {longest} characters fit in the training text, got {self.seq_len}")

    @property
    def input_size(self) -> int:
        return len(self.vocabulary)

    output_size = input_size

    def encode(self, text: str) -> np.ndarray:
        """Character indices, [N] int32; a character outside the vocabulary is an error."""
        lookup = {c: i for i, c in enumerate(self.vocabulary)}
        try:
            return np.fromiter((lookup[c] for c in text), np.int32, len(text))
        except KeyError as error:
            raise ValueError(f"text: character {error.args[0]!r} is not in the vocabulary") from None

    def decode(self, indices) -> str:
        return "".join(self.vocabulary[int(i)] for i in np.asarray(indices))

    def featurize(self, inputs: jax.Array, dtype: jnp.dtype) -> jax.Array:
        """One-hot characters: [T, B] int -> [T, B, V]."""
        return jax.nn.one_hot(inputs, self.input_size, dtype=dtype)

    def _streams(self, tokens: np.ndarray, count: int) -> Batch:
        length = len(tokens) // count
        if length < 2:
            raise ValueError(f"batch_size: {count} streams leave fewer than 2 characters each")
        streams = tokens[: length * count].reshape(count, length).T  # [L, B]
        return Batch(
            inputs=jnp.asarray(streams[:-1]),
            targets=jnp.asarray(streams[1:]),
            mask=jnp.ones((length - 1, count), bool),
            lengths=jnp.full((count,), length - 1, jnp.int32),
        )

    def stream(self, key: jax.Array, batch_size: int, length: int, dtype: jnp.dtype = jnp.float32) -> Batch:
        """The training plays as ``batch_size`` contiguous streams, repeated (epochs) to ``length`` steps.

        The streams are fixed (``key`` is unused): stream b starts at character b * N / B.
        """
        batch_size = check_batch_arguments(key, batch_size)
        length = _checks.positive_int("length", length)
        del key, dtype
        whole = self._streams(self._tokens["train"], batch_size)
        repeats = -(-length // whole.inputs.shape[0])
        tile = lambda a: jnp.tile(a, (repeats, 1))[:length]  # noqa: E731
        return Batch(tile(whole.inputs), tile(whole.targets), jnp.ones((length, batch_size), bool),
                     jnp.full((batch_size,), length, jnp.int32))  # fmt: skip

    def batch(self, key: jax.Array, batch_size: int, dtype: jnp.dtype = jnp.float32) -> Batch:
        """Random windows of ``seq_len`` + 1 training characters: inputs and targets [T, B]."""
        batch_size = check_batch_arguments(key, batch_size)
        del dtype
        tokens = jnp.asarray(self._tokens["train"])
        starts = jax.random.randint(key, (batch_size,), 0, tokens.shape[0] - self.seq_len - 1)
        windows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(tokens, s, self.seq_len + 1))(starts).T
        return Batch(windows[:-1], windows[1:], jnp.ones((self.seq_len, batch_size), bool),
                     jnp.full((batch_size,), self.seq_len, jnp.int32))  # fmt: skip

    def eval_batch(self, split: str, dtype: jnp.dtype = jnp.float32) -> Batch:
        """The validation or test plays as ``eval_streams`` contiguous streams."""
        del dtype
        return self._streams(self._tokens[_split_name(split)], self.eval_streams)

    def metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Bits per character: the mean cross-entropy in base 2."""
        logp = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, batch.targets[..., None], axis=-1)[..., 0]
        mask = batch.mask.astype(jnp.float32)
        return {"bits_per_char": jnp.sum(nll * mask) / jnp.sum(mask) / math.log(2.0)}

    def baseline(self) -> dict[str, float]:
        """The unigram model: the entropy of the training characters."""
        counts = np.bincount(self._tokens["train"], minlength=self.input_size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log(p)).sum())
        return {"loss": entropy, "bits_per_char": entropy / math.log(2.0)}


# ------------------------------------------------------------------ sunspot forecasting

SOLAR_CYCLE_MONTHS = 132  # the ~11-year Schwabe cycle: the seasonal-naive forecast's lag


@dataclass(frozen=True)
class Sunspots:
    """One-month-ahead forecasting of the monthly mean sunspot number (many-to-many).

    The series (3,126 months from 1749) is split in time: train = the first 80%, validation =
    the next 10%, test = the final 10% (313 months, 1983-2009). Values are standardised with
    the training segment's mean and standard deviation. The model reads x_1 .. x_t and predicts
    the change x_{t+1} - x_t (so the forecast is x_t + y_t and an all-zero output is the
    persistence forecast, whose loss is the trivial baseline); training uses random windows of
    ``seq_len`` months from the training segment; evaluation runs over the whole series up to
    the segment's end (the past as warm-up) and scores only the segment's months. Errors are
    reported in sunspot numbers (RMSE, MAE), beside two baselines: persistence (x_{t+1} = x_t)
    and seasonal naive over the 11-year solar cycle (x_{t+1} = x_{t+1-132}).
    """

    seq_len: int = 120
    name: str = "sunspots"
    loss: str = "squared_error"
    input_size: int = 1
    output_size: int = 1
    series: np.ndarray = field(default=None, repr=False)

    def __post_init__(self):
        _checks.positive_int("seq_len", self.seq_len)
        series = self.series if self.series is not None else datasets.sunspots().values
        n = len(series)
        train_end, val_end = int(0.8 * n), int(0.9 * n)
        if self.seq_len + 1 > train_end:
            raise ValueError(f"seq_len: at most {train_end - 1} months fit in the training segment, got {self.seq_len}")
        mean, std = float(series[:train_end].mean()), float(series[:train_end].std())
        object.__setattr__(self, "series", series)
        object.__setattr__(self, "_z", ((series - mean) / std).astype(np.float32))
        object.__setattr__(self, "_bounds", {"train": (0, train_end), "validation": (train_end, val_end),
                                             "test": (val_end, n)})  # fmt: skip
        object.__setattr__(self, "_scale", std)
        object.__setattr__(self, "_offset", mean)

    def to_sunspot_numbers(self, z: np.ndarray) -> np.ndarray:
        """Standardised values back in sunspot numbers."""
        return np.asarray(z, np.float64) * self._scale + self._offset

    def batch(self, key: jax.Array, batch_size: int, dtype: jnp.dtype = jnp.float32) -> Batch:
        """Random windows of the training segment: inputs [T, B, 1], targets (the next month's change) [T, B, 1]."""
        batch_size = check_batch_arguments(key, batch_size)
        z = jnp.asarray(self._z[: self._bounds["train"][1]])
        starts = jax.random.randint(key, (batch_size,), 0, z.shape[0] - self.seq_len - 1)
        windows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(z, s, self.seq_len + 1))(starts).T[..., None]
        mask = jnp.ones((self.seq_len, batch_size), bool)
        lengths = jnp.full((batch_size,), self.seq_len, jnp.int32)
        return Batch(windows[:-1].astype(dtype), (windows[1:] - windows[:-1]).astype(dtype), mask, lengths)

    def eval_batch(self, split: str, dtype: jnp.dtype = jnp.float32) -> Batch:
        """The series from its start to the segment's end (B = 1), scored on the segment's months."""
        start, end = self._bounds[_split_name(split)]
        z = jnp.asarray(self._z[:end])[:, None, None]
        target_index = jnp.arange(1, end)[:, None]
        inputs, changes = z[:-1].astype(dtype), (z[1:] - z[:-1]).astype(dtype)
        return Batch(inputs, changes, target_index >= start, jnp.array([end - 1], jnp.int32))

    def metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """RMSE and MAE in sunspot numbers, for the model and the two baselines, on the scored months."""
        mask = batch.mask.astype(jnp.float32)
        current = batch.inputs[..., 0].astype(jnp.float32)
        truth = current + batch.targets[..., 0].astype(jnp.float32)
        seasonal = jnp.roll(current, SOLAR_CYCLE_MONTHS - 1, axis=0)  # x_{t+1-132}; wrapped values are never scored
        model = current + outputs[..., 0].astype(jnp.float32)
        out = {}
        for name, prediction in (("", model), ("_persistence", current), ("_seasonal_naive", seasonal)):
            error = (prediction - truth) * self._scale
            out["rmse" + name] = jnp.sqrt(jnp.sum(error**2 * mask) / jnp.sum(mask))
            out["mae" + name] = jnp.sum(jnp.abs(error) * mask) / jnp.sum(mask)
        return out

    def baseline(self) -> dict[str, float]:
        """Persistence on the validation segment: its standardised MSE (the loss's units) and RMSE."""
        start, end = self._bounds["validation"]
        error = self._z[start:end] - self._z[start - 1 : end - 1]
        mse = float(np.mean(error**2))
        return {"loss": mse, "rmse": math.sqrt(mse) * self._scale}


# ------------------------------------------------------------------ Japanese vowels


@dataclass(frozen=True)
class JapaneseVowels:
    """Speaker classification from variable-length utterances (many-to-one, masked).

    Each utterance is 7 to 29 frames of 12 LPC cepstrum coefficients (standardised with the
    training frames' mean and deviation per coefficient); the class (one of 9 speakers) is read
    from the output at the utterance's last frame. Batches are padded to 29 frames with
    ``lengths``, so the state is frozen past each utterance's end. Splits: the official test set
    (370); validation = the last 6 of each speaker's 30 official training utterances.
    Trivial baseline: always the training set's most frequent class.

    References:
      Kudo, M., Toyama, J. & Shimbo, M. (1999). Pattern Recognition Letters 20(11-13).
    """

    name: str = "japanese-vowels"
    loss: str = "cross_entropy"
    input_size: int = 12
    output_size: int = 9
    seq_len: int = 29
    splits: datasets.Splits = field(default=None, repr=False)

    def __post_init__(self):
        splits = self.splits if self.splits is not None else datasets.japanese_vowels()
        frames = np.concatenate(splits.train.features)
        mean, std = frames.mean(axis=0), frames.std(axis=0)
        object.__setattr__(self, "splits", splits)
        object.__setattr__(self, "seq_len", max(len(f) for s in splits for f in s.features))
        padded = {name: self._pad(getattr(splits, name), mean, std) for name in ("train", "validation", "test")}
        object.__setattr__(self, "_padded", padded)

    def _pad(self, data: datasets.Sequences, mean: np.ndarray, std: np.ndarray) -> Batch:
        num_steps, count = self.seq_len, len(data.features)
        inputs = np.zeros((num_steps, count, self.input_size), np.float32)
        for b, f in enumerate(data.features):
            inputs[: len(f), b] = (f - mean) / std
        lengths = jnp.asarray([len(f) for f in data.features], jnp.int32)
        targets = jnp.broadcast_to(jnp.asarray(data.labels)[None, :], (num_steps, count))
        return Batch(jnp.asarray(inputs), targets, _last_step_mask(lengths, num_steps), lengths)

    def batch(self, key: jax.Array, batch_size: int, dtype: jnp.dtype = jnp.float32) -> Batch:
        """``batch_size`` training utterances drawn with replacement, padded: inputs [29, B, 12]."""
        batch_size = check_batch_arguments(key, batch_size)
        train = self._padded["train"]
        pick = jax.random.randint(key, (batch_size,), 0, train.lengths.shape[0])
        return Batch(train.inputs[:, pick].astype(dtype), train.targets[:, pick], train.mask[:, pick],
                     train.lengths[pick])  # fmt: skip

    def eval_batch(self, split: str, dtype: jnp.dtype = jnp.float32) -> Batch:
        whole = self._padded[_split_name(split)]
        return whole._replace(inputs=whole.inputs.astype(dtype))

    def metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Accuracy of the class read at each utterance's last frame."""
        correct = (jnp.argmax(outputs, axis=-1) == batch.targets).astype(jnp.float32)
        mask = batch.mask.astype(jnp.float32)
        return {"accuracy": jnp.sum(correct * mask) / jnp.sum(mask)}

    def predictions(self, outputs: jax.Array, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, true) classes, [N] each, for a confusion matrix."""
        last = np.asarray(batch.lengths) - 1
        columns = np.arange(len(last))
        return np.asarray(jnp.argmax(outputs, axis=-1))[last, columns], np.asarray(batch.targets)[last, columns]

    def baseline(self) -> dict[str, float]:
        """Always the most frequent training class: its share of the test set; loss ln 9 (uniform)."""
        majority = np.bincount(self.splits.train.labels).argmax()
        return {"loss": math.log(self.output_size), "accuracy": float(np.mean(self.splits.test.labels == majority))}
