"""Synthetic tasks generated from a key: no download, any size, the same batch for the same key."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import _checks
from rnn_jax.tasks.base import Batch, check_batch_arguments


@dataclass(frozen=True)
class TemporalXOR:
    """Elman's (1990) temporal XOR: predict the next bit of a stream of (a, b, a XOR b) triples.

    The stream is bits ``a_1 b_1 c_1 a_2 b_2 c_2 ...`` with ``c_k = a_k XOR b_k`` and a, b fair
    coin flips. Input x_t is bit t, the target is bit t + 1 (two classes, cross-entropy on
    logits). Only every third bit (the c's, targets at t = 1, 4, 7, ... counting from 0) is
    predictable; the others are coin flips, so the best possible loss there is ln 2 and the best
    accuracy 1/2. Each of the B sequences is its own stream and starts with an ``a`` bit. A batch needs
    ``seq_len`` T >= 2 (the first XOR bit is the target at t = 1); a `stream` may be one step long.

    References:
      Elman, J. L. (1990). Finding structure in time. Cognitive Science 14(2), 179-211.
    """

    seq_len: int = 30
    name: str = "xor"
    input_size: int = 1
    output_size: int = 2
    loss: str = "cross_entropy"

    def __post_init__(self):
        _checks.positive_int("seq_len", self.seq_len)
        if self.seq_len < 2:  # the first XOR bit is the target at t = 1; with none, accuracy_xor_bits was NaN
            raise ValueError(f"seq_len: the xor task needs at least 2 steps (a bit to predict), got {self.seq_len}")

    def predictable(self) -> np.ndarray:
        """[T] bool: the steps whose target (the next bit) is an XOR bit (static, NumPy)."""
        return np.arange(self.seq_len) % 3 == 1

    def batch(self, key: jax.Array, batch_size: int, dtype: jnp.dtype = jnp.float32) -> Batch:
        """B independent streams of T + 1 bits: inputs [T, B, 1], integer targets [T, B]."""
        return self.stream(key, batch_size, self.seq_len, dtype)

    def stream(self, key: jax.Array, batch_size: int, length: int, dtype: jnp.dtype = jnp.float32) -> Batch:
        """B independent streams of ``length`` steps (for truncated BPTT, where a window may be 1 step long): a batch
        with T = length."""
        batch_size = check_batch_arguments(key, batch_size)
        length = _checks.positive_int("length", length)
        triples = length // 3 + 1
        ab = jax.random.bernoulli(key, 0.5, (triples, 2, batch_size)).astype(jnp.int32)
        stream = jnp.concatenate([ab, (ab[:, 0] ^ ab[:, 1])[:, None]], axis=1)  # [triples, 3, B]
        stream = stream.reshape(3 * triples, batch_size)[: length + 1]  # [T + 1, B]
        return Batch(
            inputs=stream[:-1, :, None].astype(dtype),
            targets=stream[1:],
            mask=jnp.ones((length, batch_size), bool),
            lengths=jnp.full((batch_size,), length, jnp.int32),
        )

    def metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Accuracy on the predictable (XOR) targets and on the coin-flip targets."""
        correct = (jnp.argmax(outputs, axis=-1) == batch.targets).astype(jnp.float32)  # [T, B]
        on_xor = self.predictable()
        return {
            "accuracy_xor_bits": jnp.mean(correct[on_xor]),
            "accuracy_other_bits": jnp.mean(correct[~on_xor]),
        }

    def baseline(self) -> dict[str, float]:
        """Chance: accuracy 1/2 on every bit, cross-entropy ln 2."""
        return {"loss": float(jnp.log(2.0)), "accuracy_xor_bits": 0.5}


@dataclass(frozen=True)
class Adding:
    """The adding problem: the sum of two marked numbers, read out at the last step.

    Each step carries two inputs: a value drawn from U[0, 1) and a marker (1 at two steps, else
    0). The first marker falls in the first half of the sequence, the second in the second half,
    and the target at the sequence's last valid step is the sum of the two marked values
    (many-to-one, squared error). Predicting the constant 1 (the mean of the sum) scores an MSE
    of Var(v1 + v2) = 2/12 = 1/6, the trivial baseline. With ``min_len`` set, each sequence's
    length is drawn from [min_len, T] and the batch is padded.

    References:
      Hochreiter, S. & Schmidhuber, J. (1997). Long short-term memory. Neural Computation 9(8).
      Le, Q. V., Jaitly, N. & Hinton, G. E. (2015). A simple way to initialize recurrent
      networks of rectified linear units. arXiv:1504.00941 (this variant: U[0,1] values, sum).
    """

    seq_len: int = 20
    min_len: int | None = None
    name: str = "adding"
    input_size: int = 2
    output_size: int = 1
    loss: str = "squared_error"

    def __post_init__(self):
        _checks.positive_int("seq_len", self.seq_len)
        if self.seq_len < 2:
            raise ValueError(f"seq_len: the adding problem needs at least 2 steps, got {self.seq_len}")
        if self.min_len is not None and not 2 <= self.min_len <= self.seq_len:
            raise ValueError(f"min_len: expected a value in [2, seq_len={self.seq_len}], got {self.min_len}")

    def batch(self, key: jax.Array, batch_size: int, dtype: jnp.dtype = jnp.float32) -> Batch:
        """Inputs [T, B, 2] (value, marker), targets [T, B, 1] (the sum, scored at the last valid step)."""
        batch_size = check_batch_arguments(key, batch_size)
        k_len, k_val, k_first, k_second = jax.random.split(key, 4)
        num_steps = self.seq_len
        if self.min_len is None:
            lengths = jnp.full((batch_size,), num_steps, jnp.int32)
        else:
            lengths = jax.random.randint(k_len, (batch_size,), self.min_len, num_steps + 1, jnp.int32)
        half = lengths // 2
        first = jax.random.randint(k_first, (batch_size,), 0, half, jnp.int32)
        second = jax.random.randint(k_second, (batch_size,), half, lengths, jnp.int32)
        steps = jnp.arange(num_steps, dtype=jnp.int32)[:, None]  # [T, 1]
        valid = steps < lengths[None, :]  # [T, B]
        marker = (steps == first[None, :]) | (steps == second[None, :])  # [T, B]
        values = jnp.where(valid, jax.random.uniform(k_val, (num_steps, batch_size), jnp.float32), 0.0)
        total = jnp.sum(jnp.where(marker, values, 0.0), axis=0)  # [B]
        inputs = jnp.stack([values, marker.astype(jnp.float32)], axis=-1)
        targets = jnp.broadcast_to(total[None, :, None], (num_steps, batch_size, 1))
        return Batch(
            inputs=inputs.astype(dtype),
            targets=targets.astype(dtype),
            mask=steps == lengths[None, :] - 1,
            lengths=lengths,
        )

    def metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """MSE of the read-out, and the fraction of sequences within 0.04 of their target."""
        mask = batch.mask.astype(jnp.float32)
        error = (outputs[..., 0] - batch.targets[..., 0]).astype(jnp.float32)
        count = jnp.sum(mask)
        return {
            "mse": jnp.sum(jnp.square(error) * mask) / count,
            "accuracy_within_0.04": jnp.sum(jnp.where(jnp.abs(error) < 0.04, mask, 0.0)) / count,
        }

    def baseline(self) -> dict[str, float]:
        """The constant predictor 1: MSE 1/6."""
        return {"loss": 1.0 / 6.0, "mse": 1.0 / 6.0}


@dataclass(frozen=True)
class TemporalOrder:
    """The temporal-order task: which of A and B came first, read out at the last step (4 classes).

    Each step is one of 6 one-hot symbols: A (0), B (1) and four distractors (2-5). Every step holds a
    random distractor except two: one position drawn from [0.1 T, 0.2 T) and one from [0.5 T, 0.6 T),
    each holding A or B. The class of the sequence, read out at the last step (many-to-one,
    cross-entropy on 4 logits), is the ordered pair: AA = 0, AB = 1, BA = 2, BB = 3. The four classes
    are equally likely, so chance is accuracy 1/4 and cross-entropy ln 4. Pascanu et al. count a
    model as successful under 1% misclassified on 10,000 fresh sequences.

    References:
      Hochreiter, S. & Schmidhuber, J. (1997). Long short-term memory. Neural Computation 9(8)
      (Experiment 6a).
      Pascanu, R., Mikolov, T. & Bengio, Y. (2013). On the difficulty of training recurrent
      neural networks. ICML (this generator).
    """

    seq_len: int = 50
    name: str = "temporal_order"
    input_size: int = 6
    output_size: int = 4
    loss: str = "cross_entropy"

    def __post_init__(self):
        _checks.positive_int("seq_len", self.seq_len)
        if self.seq_len < 10:
            raise ValueError(f"seq_len: the temporal-order task needs at least 10 steps, got {self.seq_len}")

    def windows(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The [low, high) ranges of the two relevant positions."""
        t = self.seq_len
        first = (int(0.1 * t), max(int(0.2 * t), int(0.1 * t) + 1))
        second = (int(0.5 * t), max(int(0.6 * t), int(0.5 * t) + 1))
        return first, second

    def batch(self, key: jax.Array, batch_size: int, dtype: jnp.dtype = jnp.float32) -> Batch:
        """Inputs [T, B, 6] one-hot, integer class targets [T, B] (scored at the last step only)."""
        batch_size = check_batch_arguments(key, batch_size)
        k_noise, k_first, k_second, k_symbols = jax.random.split(key, 4)
        num_steps = self.seq_len
        (low1, high1), (low2, high2) = self.windows()
        symbols = jax.random.randint(k_noise, (num_steps, batch_size), 2, 6, jnp.int32)  # distractors
        first = jax.random.randint(k_first, (batch_size,), low1, high1, jnp.int32)
        second = jax.random.randint(k_second, (batch_size,), low2, high2, jnp.int32)
        which = jax.random.randint(k_symbols, (2, batch_size), 0, 2, jnp.int32)  # 0 = A, 1 = B
        steps = jnp.arange(num_steps, dtype=jnp.int32)[:, None]
        symbols = jnp.where(steps == first[None, :], which[0][None, :], symbols)
        symbols = jnp.where(steps == second[None, :], which[1][None, :], symbols)
        label = 2 * which[0] + which[1]  # [B]: AA 0, AB 1, BA 2, BB 3
        return Batch(
            inputs=jax.nn.one_hot(symbols, 6, dtype=dtype),
            targets=jnp.broadcast_to(label[None, :], (num_steps, batch_size)),
            mask=jnp.broadcast_to(steps == num_steps - 1, (num_steps, batch_size)),
            lengths=jnp.full((batch_size,), num_steps, jnp.int32),
        )

    def metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Accuracy of the class read out at the last step."""
        correct = jnp.argmax(outputs[-1], axis=-1) == batch.targets[-1]
        return {"accuracy": jnp.mean(correct.astype(jnp.float32))}

    def baseline(self) -> dict[str, float]:
        """Chance: accuracy 1/4, cross-entropy ln 4."""
        return {"loss": float(np.log(4.0)), "accuracy": 0.25}
