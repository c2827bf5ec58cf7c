"""Independent oracles: the Elman recurrence written as a plain Python loop in NumPy float64.

Nothing here uses rnn_jax's step, scan or masking code, so agreement is evidence, not a tautology.
"""

from __future__ import annotations

import numpy as np

PHI = {
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "relu": lambda z: np.maximum(z, 0.0),
    "identity": lambda z: z,
}


def elman_loop(params, xs, activation="tanh", s0=None, lengths=None):
    """outputs [T, B, O] (zero past a length), states [T, B, H], final [B, H], by loops over t and b."""
    w_x, w_s, b_s, w_y, b_y = (np.asarray(p, np.float64) for p in params)
    xs = np.asarray(xs, np.float64)
    num_steps, batch, _ = xs.shape
    hidden = w_s.shape[0]
    s = np.zeros((batch, hidden)) if s0 is None else np.array(s0, np.float64)
    states, outputs = [], []
    for t in range(num_steps):
        new = PHI[activation](xs[t] @ w_x + s @ w_s + b_s)
        y = np.zeros((batch, w_y.shape[1]))
        for b in range(batch):
            if lengths is None or t < lengths[b]:
                s[b] = new[b]
                y[b] = s[b] @ w_y + b_y
        states.append(s.copy())
        outputs.append(y)
    return np.stack(outputs), np.stack(states), s
