"""Meeting other frameworks where they are: parameter conversion both ways.

  `rnn_jax.interop.flax`   the Elman cell as a ``flax.linen`` recurrent cell (for ``flax.linen.RNN``),
                           with its params dict converted to and from `ElmanParams`;
  `rnn_jax.interop.torch`  Elman, LSTM and GRU parameters to and from the state dicts of PyTorch's
                           ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (as NumPy arrays; torch itself is not imported).
  `rnn_jax.interop.saved`  saved models: parameters with their `ModelConfig`, a small versioned format on
                           orbax-checkpoint (``save(directory, params, config)``, ``load(directory)``).

Import the submodule you need; this package imports neither.
"""
