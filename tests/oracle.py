"""Independent oracles: the Elman, LSTM and GRU recurrences written as a plain Python loop in NumPy float64.

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


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_loop(params, xs, activation="tanh", h0=None, c0=None, lengths=None):
    """LSTM (gates i, f, g, o) by loops over t, b and the H units: outputs [T, B, O], states (h [T, B, H],
    c [T, B, H]), final (h, c)."""
    w_x, w_s, b_s, w_y, b_y = (np.asarray(p, np.float64) for p in params)
    xs = np.asarray(xs, np.float64)
    num_steps, batch, _ = xs.shape
    hidden = w_s.shape[0]
    phi = PHI[activation]
    h = np.zeros((batch, hidden)) if h0 is None else np.array(h0, np.float64)
    c = np.zeros((batch, hidden)) if c0 is None else np.array(c0, np.float64)
    hs, cs, outputs = [], [], []
    for t in range(num_steps):
        y = np.zeros((batch, w_y.shape[1]))
        for b in range(batch):
            if lengths is not None and t >= lengths[b]:
                continue
            new_h, new_c = np.zeros(hidden), np.zeros(hidden)
            for k in range(hidden):
                gate = [
                    xs[t, b] @ w_x[:, j * hidden + k] + h[b] @ w_s[:, j * hidden + k] + b_s[j * hidden + k]
                    for j in range(4)
                ]
                i, f, g, o = _sigmoid(gate[0]), _sigmoid(gate[1]), phi(gate[2]), _sigmoid(gate[3])
                new_c[k] = f * c[b, k] + i * g
                new_h[k] = o * phi(new_c[k])
            h[b], c[b] = new_h, new_c
            y[b] = h[b] @ w_y + b_y
        hs.append(h.copy())
        cs.append(c.copy())
        outputs.append(y)
    return np.stack(outputs), (np.stack(hs), np.stack(cs)), (h, c)


def gru_loop(params, xs, activation="tanh", h0=None, lengths=None):
    """GRU in the PyTorch form (gates r, z, n; reset after the recurrent product) by loops over t, b and the
    H units: outputs [T, B, O], states [T, B, H], final [B, H]."""
    w_x, w_s, b_x, b_s, w_y, b_y = (np.asarray(p, np.float64) for p in params)
    xs = np.asarray(xs, np.float64)
    num_steps, batch, _ = xs.shape
    hidden = w_s.shape[0]
    phi = PHI[activation]
    h = np.zeros((batch, hidden)) if h0 is None else np.array(h0, np.float64)
    states, outputs = [], []
    for t in range(num_steps):
        y = np.zeros((batch, w_y.shape[1]))
        for b in range(batch):
            if lengths is not None and t >= lengths[b]:
                continue
            new_h = np.zeros(hidden)
            for k in range(hidden):
                a = [xs[t, b] @ w_x[:, j * hidden + k] + b_x[j * hidden + k] for j in range(3)]
                u = [h[b] @ w_s[:, j * hidden + k] + b_s[j * hidden + k] for j in range(3)]
                r, z = _sigmoid(a[0] + u[0]), _sigmoid(a[1] + u[1])
                n = phi(a[2] + r * u[2])
                new_h[k] = (1 - z) * n + z * h[b, k]
            h[b] = new_h
            y[b] = h[b] @ w_y + b_y
        states.append(h.copy())
        outputs.append(y)
    return np.stack(outputs), np.stack(states), h


def relative_error(got, want) -> float:
    """|got - want| / |want| over every leaf of two pytrees of arrays (Euclidean norms of all entries together)."""
    import jax  # the loops above are NumPy only; this compares pytrees

    pairs = list(zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True))
    difference = sum(float(np.sum(np.square(np.asarray(g, np.float64) - np.asarray(w, np.float64)))) for g, w in pairs)
    return float(np.sqrt(difference / sum(float(np.sum(np.square(np.asarray(w, np.float64)))) for _, w in pairs)))
