"""rnn-jax: recurrent neural networks as pure JAX functions.

The Elman network (Elman 1990) is

    s_t = phi(x_t W_x + s_{t-1} W_s + b_s)        (state)
    y_t = s_t W_y + b_y                           (output: logits or a linear read-out)

written as a step function that `jax.lax.scan` unrolls through time; `jax.grad` of a loss
through the scan is backpropagation through time (BPTT).

Shape letters, used in every docstring of the package:

    T  time steps            B  batch (independent sequences)
    D  input features        H  state (hidden) units
    O  output features

Sequences are time-major ``[T, B, D]`` inside the library. Functions at the API edge accept
batch-first ``[B, T, D]`` with ``time_major=False`` and convert once.
"""

from rnn_jax import activations, diagnostics, initializers, seq2seq
from rnn_jax.cells import elman, gru, lstm
from rnn_jax.cells.elman import ElmanParams
from rnn_jax.losses import cross_entropy, squared_error
from rnn_jax.optim import OptimConfig, clip_fired, make_optimizer
from rnn_jax.unroll import Unrolled, generate, last_valid, sequence_mask, unroll

__all__ = [
    "ElmanParams",
    "OptimConfig",
    "Unrolled",
    "activations",
    "clip_fired",
    "cross_entropy",
    "diagnostics",
    "elman",
    "generate",
    "gru",
    "initializers",
    "last_valid",
    "lstm",
    "make_optimizer",
    "seq2seq",
    "sequence_mask",
    "squared_error",
    "unroll",
]
