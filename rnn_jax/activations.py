"""The state non-linearity phi of a recurrent cell, chosen by name or given as a callable.

Each named activation comes with its derivative written in terms of the activation's *output*
(``phi'(pre) = dphi(phi(pre))``), the form the hand-derived BPTT equations use: for tanh,
``1 - s**2``; for the logistic sigmoid, ``s (1 - s)``. ``gamma`` is the bound ``|phi'| <= gamma``
that enters the vanishing-gradient condition of Pascanu et al. (2013).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Activation(NamedTuple):
    """A named element-wise non-linearity.

    Attributes:
      name: the name it is chosen by ("tanh", "sigmoid", "relu", "identity"), or the
        callable's ``__name__``.
      fn: phi itself, element-wise.
      derivative_from_output: ``s -> phi'(pre)`` where ``s = phi(pre)``; ``None`` for a
        user callable, whose derivative is then taken with ``jax.jvp``.
      gamma: an upper bound on ``|phi'|`` (``inf`` when unbounded or unknown).
    """

    name: str
    fn: Callable[[jax.Array], jax.Array]
    derivative_from_output: Callable[[jax.Array], jax.Array] | None
    gamma: float


def _relu_derivative(s: jax.Array) -> jax.Array:
    return (s > 0).astype(s.dtype)


NAMED: dict[str, Activation] = {
    "tanh": Activation("tanh", jnp.tanh, lambda s: 1 - s * s, 1.0),
    "sigmoid": Activation("sigmoid", jax.nn.sigmoid, lambda s: s * (1 - s), 0.25),
    "relu": Activation("relu", jax.nn.relu, _relu_derivative, 1.0),
    "identity": Activation("identity", lambda z: z, jnp.ones_like, 1.0),
}


def get(activation: str | Callable[[jax.Array], jax.Array] | Activation) -> Activation:
    """Resolves ``activation`` (a name, a callable or an `Activation`) to an `Activation`.

    Raises:
      ValueError: for an unknown name, listing the known ones.
      TypeError: for anything that is neither a string nor a callable, and for a NumPy ufunc (``np.tanh``), which
        cannot take the traced arrays of jit, scan and grad that every unroll passes it.
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        try:
            return NAMED[activation]
        except KeyError:
            raise ValueError(f"activation: expected one of {sorted(NAMED)} or a callable, got {activation!r}") from None
    if isinstance(activation, np.ufunc):
        twin = f"jnp.{activation.__name__}" if hasattr(jnp, activation.__name__) else "a jax.numpy function"
        raise TypeError(
            f"activation: expected a JAX-traceable callable, got the NumPy ufunc np.{activation.__name__}, which fails "
            f"on the traced arrays of jit, scan and grad; use {twin}"
        )
    if callable(activation):
        name = getattr(activation, "__name__", type(activation).__name__)
        return Activation(name, activation, None, float("inf"))
    raise TypeError(f"activation: expected a name or a callable, got {type(activation).__name__} {activation!r}")


def derivative(activation: Activation, pre: jax.Array, s: jax.Array) -> jax.Array:
    """phi'(pre), element-wise, from the pre-activation ``pre`` and the output ``s = phi(pre)``."""
    if activation.derivative_from_output is not None:
        return activation.derivative_from_output(s)
    return jax.jvp(activation.fn, (pre,), (jnp.ones_like(pre),))[1]
