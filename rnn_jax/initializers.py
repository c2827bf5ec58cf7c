"""Initialisers for the weight matrices of a recurrent network, each a pure function of a key.

Scaled uniform/normal (Glorot & Bengio 2010; LeCun et al. 1998) come from
`jax.nn.initializers`; the recurrent matrix can also start orthogonal (Saxe et al. 2014),
as the identity (IRNN, Le, Jaitly & Hinton 2015), and be rescaled to a chosen spectral radius
(the quantity that decides, for a linear recurrence, whether gradients vanish or explode;
Pascanu et al. 2013).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]

_SCALED: dict[str, Initializer] = {
    "glorot_uniform": jax.nn.initializers.glorot_uniform(),
    "glorot_normal": jax.nn.initializers.glorot_normal(),
    "lecun_uniform": jax.nn.initializers.lecun_uniform(),
    "lecun_normal": jax.nn.initializers.lecun_normal(),
    "orthogonal": jax.nn.initializers.orthogonal(),
}
MATRIX_INITS = (*_SCALED, "identity")


def matrix(key: jax.Array, name: str, shape: tuple[int, int], dtype: jnp.dtype, scale: float = 1.0) -> jax.Array:
    """A ``shape`` matrix drawn by the initialiser ``name``, times ``scale``.

    ``name`` is one of `MATRIX_INITS`. The draw is made in float32 (float64 when ``dtype`` is
    float64) and cast, so that bfloat16 gets the same matrices rounded.

    Raises:
      ValueError: for an unknown name, or "identity" on a non-square shape.
    """
    work = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
    if name == "identity":
        if shape[0] != shape[1]:
            raise ValueError(f"init 'identity': needs a square matrix, got shape {shape}")
        w = jnp.eye(shape[0], dtype=work)
    elif name in _SCALED:
        w = _SCALED[name](key, shape, work)
    else:
        raise ValueError(f"init: expected one of {list(MATRIX_INITS)}, got {name!r}")
    return (w * scale).astype(dtype)


def spectral_radius(w: jax.Array) -> float:
    """max |eigenvalue| of the square matrix ``w`` (computed on the host in float64)."""
    return float(np.max(np.abs(np.linalg.eigvals(np.asarray(w, dtype=np.float64)))))


def scale_to_spectral_radius(w: jax.Array, radius: float) -> jax.Array:
    """``w`` rescaled so that its spectral radius is ``radius``.

    Runs eagerly (the eigenvalues are computed on the host), so call it at initialisation,
    not inside `jax.jit`.

    Raises:
      ValueError: when ``radius`` is negative or ``w`` is nilpotent (spectral radius 0).
    """
    if radius < 0:
        raise ValueError(f"spectral_radius: expected a value >= 0, got {radius}")
    current = spectral_radius(w)
    if current == 0.0:
        raise ValueError("spectral_radius: the recurrent matrix has spectral radius 0 and cannot be rescaled")
    return (w * (radius / current)).astype(w.dtype)
