"""Recurrent cells, one module each, all with the same interface.

Each cell module provides:
  ``Params``                                a NamedTuple pytree whose first field ``w_x`` is [D, ...];
  ``init(key, input_size, hidden_size, output_size, *, input_init, recurrent_init,
         recurrent_scale, spectral_radius, dtype, ...)``   the parameters, a pure function of the key;
  ``initial_state(params, batch_size)``     the zero carry (a [B, H] array, or a tuple of them);
  ``step(params, carry, x, *, activation)`` one time step ``-> (carry, y)``, carry first, so that
                                            `jax.lax.scan` unrolls it with no adapter;
  ``transition(params, carry, x, *, activation, recurrent_mask=None)``
                                            the state update alone ``-> carry`` (``step`` is transition
                                            then read-out; ``recurrent_mask`` [B, H] multiplies h_{t-1}
                                            where it enters the recurrent product: recurrent dropout);
  ``project_input(params, x)``              the input's part of the gates, x W_x (+ an input bias): [B, D] ->
                                            [B, G H], or [T, B, D] -> [T, B, G H] for every step in one product;
  ``transition_projected(params, carry, x_proj, *, activation, recurrent_mask=None)``
                                            `transition` from ``project_input(params, x)`` instead of x
                                            (``transition`` is exactly this composition);
  ``hidden(carry)``                         h_t, [B, H]: what the read-out and the next layer see.

The gated cells (LSTM, GRU) split ``transition_projected`` further, for their hand-derived backward passes in
`rnn_jax.bptt`: ``pre_activations(params, h_in, x_proj)`` (what the gate equations start from, kept per step) and
``update(pre, carry, *, activation)`` (the gate equations, -> the new carry).

Registered in `CELLS`: "elman" (carry [B, H]), "lstm" (carry an ``LSTMState(h, c)`` of two [B, H]) and "gru"
(carry [B, H]).
"""

from __future__ import annotations

from types import ModuleType

from rnn_jax.cells import elman, gru, lstm

CELLS: dict[str, ModuleType] = {"elman": elman, "lstm": lstm, "gru": gru}


def get(name: str) -> ModuleType:
    """The cell module called ``name``.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"model: expected one of {sorted(CELLS)}, got {name!r}") from None


def resolve(cell: str | ModuleType) -> ModuleType:
    """The cell module ``cell``, or the one called ``cell`` (any object with ``step`` and ``initial_state``
    passes, so that a user's own cell module works).

    Raises:
      ValueError: for an unknown name; TypeError, naming ``cell``, for anything else that is not a cell.
    """
    if isinstance(cell, str):
        try:
            return CELLS[cell]
        except KeyError:
            raise ValueError(f"cell: expected one of {sorted(CELLS)} or a cell module, got {cell!r}") from None
    if not (hasattr(cell, "step") and hasattr(cell, "initial_state")):
        raise TypeError(
            f"cell: expected a cell module (rnn_jax.elman, rnn_jax.lstm, rnn_jax.gru) or its name, got {cell!r}"
        )
    return cell


__all__ = ["CELLS", "elman", "get", "gru", "lstm", "resolve"]
