"""The Elman cell: parameters, initialisers, the step equation, dtypes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj
from rnn_jax import initializers


def test_params_have_the_textbook_names_and_shapes(key):
    p = rj.elman.init(key, 3, 5, 2)
    assert rj.ElmanParams._fields == ("w_x", "w_s", "b_s", "w_y", "b_y")
    assert [leaf.shape for leaf in p] == [(3, 5), (5, 5), (5,), (5, 2), (2,)]
    assert p.sizes == (3, 5, 2)
    assert all(leaf.dtype == jnp.float32 for leaf in p)


def test_step_is_the_elman_equation(key):
    p = rj.elman.init(key, 3, 5, 2)
    p = p._replace(b_s=jnp.full((5,), 0.1), b_y=jnp.full((2,), -0.2))
    s_prev = jax.random.normal(jax.random.key(1), (4, 5))
    x = jax.random.normal(jax.random.key(2), (4, 3))
    s, y = rj.elman.step(p, s_prev, x, activation="sigmoid")
    pn = [np.asarray(a, np.float64) for a in p]
    want_s = 1 / (1 + np.exp(-(np.asarray(x) @ pn[0] + np.asarray(s_prev) @ pn[1] + pn[2])))
    np.testing.assert_allclose(s, want_s, rtol=1e-5)
    np.testing.assert_allclose(y, want_s @ pn[3] + pn[4], rtol=1e-5, atol=1e-6)


def test_step_accepts_any_callable_activation(key):
    p = rj.elman.init(key, 3, 5, 2)
    s_prev, x = jnp.zeros((1, 5)), jnp.ones((1, 3))
    s, _ = rj.elman.step(p, s_prev, x, activation=jnp.sin)
    np.testing.assert_allclose(s, jnp.sin(x @ p.w_x), rtol=1e-6)


def test_numpy_ufunc_activation_is_refused_naming_its_jnp_twin(key):
    """np.tanh was accepted and failed later, inside jit, with a TracerArrayConversionError."""
    with pytest.raises(TypeError, match=r"activation: .*got the NumPy ufunc np.tanh.*use jnp.tanh"):
        rj.activations.get(np.tanh)
    p = rj.elman.init(key, 3, 5, 2)
    with pytest.raises(TypeError, match=r"NumPy ufunc np.sin.*use jnp.sin"):
        rj.unroll(p, jnp.ones((4, 1, 3)), activation=np.sin)


def test_orthogonal_recurrent_matrix_is_orthogonal(key):
    w = rj.elman.init(key, 3, 16, 2).w_s
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-5)


def test_identity_init_is_the_irnn(key):
    p = rj.elman.init(key, 3, 6, 2, recurrent_init="identity", recurrent_scale=0.5)
    np.testing.assert_array_equal(p.w_s, 0.5 * np.eye(6))


@pytest.mark.parametrize("radius", [0.5, 1.0, 1.5])
def test_rescale_to_spectral_radius(key, radius):
    p = rj.elman.init(key, 3, 20, 2, recurrent_init="glorot_normal", spectral_radius=radius)
    eigenvalues = np.linalg.eigvals(np.asarray(p.w_s, np.float64))
    np.testing.assert_allclose(np.max(np.abs(eigenvalues)), radius, rtol=1e-5)


@pytest.mark.parametrize("name", ["glorot_uniform", "glorot_normal", "lecun_uniform", "lecun_normal"])
def test_scaled_initialisers_have_their_variance(key, name):
    fan_in, fan_out = 200, 300
    w = np.asarray(initializers.matrix(key, name, (fan_in, fan_out), jnp.float32))
    want = 2 / (fan_in + fan_out) if name.startswith("glorot") else 1 / fan_in
    np.testing.assert_allclose(w.var(), want, rtol=0.05)


def test_initialisation_is_a_pure_function_of_the_key(key):
    a, b = rj.elman.init(key, 3, 5, 2), rj.elman.init(key, 3, 5, 2)
    c = rj.elman.init(jax.random.key(1), 3, 5, 2)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a.w_x, c.w_x)
    # each matrix gets its own sub-key: W_x and W_y are not drawn from the same stream
    assert not np.allclose(a.w_x[:, :2], a.w_y[:3, :2])


def test_dtypes(key, x64):
    for dtype in (jnp.float64, jnp.bfloat16):
        p = rj.elman.init(key, 3, 5, 2, dtype=dtype)
        assert all(leaf.dtype == dtype for leaf in p)
        out = rj.unroll(p, jnp.ones((4, 2, 3), dtype)).outputs
        assert out.dtype == dtype and bool(jnp.isfinite(out).all())


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((0, 5, 2), {}, r"input_size: expected a positive integer, got 0"),
        ((3, -1, 2), {}, r"hidden_size: expected a positive integer, got -1"),
        ((3, 5, 2.5), {}, r"output_size: expected a positive integer, got 2.5"),
        ((jnp.int32(3), 5, 2), {}, r"input_size: .*got Array\(3, dtype=int32\).*convert the array with int"),
        ((3, 5, 2), {"recurrent_init": "eye"}, r"init: expected one of .*got 'eye'"),
        ((3, 5, 2), {"input_init": "identity"}, r"input_init: 'identity' applies only to the recurrent matrix"),
        ((3, 5, 2), {"spectral_radius": -1.0}, r"spectral_radius: expected a value >= 0"),
        ((3, 5, 2), {"dtype": jnp.int32}, r"dtype: expected a floating dtype"),
    ],
)
def test_bad_sizes_and_names_get_clear_errors(key, args, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        rj.elman.init(key, *args, **kwargs)


CELLS = {"elman": rj.elman, "lstm": rj.lstm, "gru": rj.gru}


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spectral_radius": float("nan")}, r"spectral_radius: expected a value >= 0 and finite, or None, got nan"),
        ({"spectral_radius": float("inf")}, r"spectral_radius: expected a value >= 0 and finite, or None, got inf"),
        ({"recurrent_scale": float("nan")}, r"recurrent_scale: expected a finite number > 0, got nan"),
        ({"recurrent_scale": float("inf")}, r"recurrent_scale: expected a finite number > 0, got inf"),
        ({"recurrent_scale": 0.0}, r"recurrent_scale: expected a finite number > 0, got 0.0"),
        ({"recurrent_scale": -0.5}, r"recurrent_scale: expected a finite number > 0, got -0.5"),
        ({"recurrent_scale": "1"}, r"recurrent_scale: expected a finite number > 0, got '1'"),  # a NumPy error
        (
            {"recurrent_init": "ortho"},
            r"recurrent_init: expected one of \['glorot_uniform', .*'identity'\], got 'ortho'",
        ),
        ({"input_init": "ortho"}, r"input_init: expected one of \['glorot_uniform', .*'orthogonal'\], got 'ortho'"),
    ],
)
def test_recurrent_options_that_would_give_nan_weights_are_refused_by_name(key, cell, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cell.init(key, 3, 5, 2, **kwargs)


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
def test_spectral_radius_zero_or_none_and_numpy_scalars_stay_legal(key, cell):
    assert not np.asarray(cell.init(key, 3, 5, 2, spectral_radius=0.0).w_s).any()
    plain = cell.init(key, 3, 5, 2, recurrent_scale=0.5, spectral_radius=None)
    numpy_scale = cell.init(key, 3, 5, 2, recurrent_scale=np.float32(0.5))
    rescaled = cell.init(key, 3, 5, 2, recurrent_scale=1.0, spectral_radius=np.float64(1.5))  # the default scale
    np.testing.assert_allclose(np.asarray(cell.init(key, 3, 5, 2).w_s) * 0.5, plain.w_s, rtol=1e-6)
    np.testing.assert_array_equal(numpy_scale.w_s, plain.w_s)
    assert np.isfinite(np.asarray(rescaled.w_s)).all()


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
@pytest.mark.parametrize(("scale", "radius"), [(3.0, 0.5), (0.5, 0.0), (np.float32(2.0), np.float64(1.5))])
def test_a_recurrent_scale_with_a_spectral_radius_is_refused_naming_both(key, cell, scale, radius):
    """W_s is rescaled to the spectral radius after the scale multiplies it: the scale was ignored without a word
    (the run was bit-identical to one without it)."""
    message = (
        r"recurrent_scale: has no effect with spectral_radius \(W_s is rescaled to that radius after scaling\), "
        rf"got recurrent_scale={float(scale)!r} and spectral_radius={float(radius)!r}; drop one"
    )
    with pytest.raises(ValueError, match=message):
        cell.init(key, 3, 5, 2, recurrent_scale=scale, spectral_radius=radius)


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"recurrent_scale": 1e300}, r"recurrent_scale: expected at most 3.4e\+38 \(float32's largest\), got 1e\+300"),
        ({"spectral_radius": 1e39}, r"spectral_radius: expected at most 3.4e\+38 \(float32's largest\), got 1e\+39"),
        (
            {"spectral_radius": 1e39, "dtype": jnp.bfloat16},
            r"spectral_radius: expected at most 3.4e\+38 \(bfloat16's largest\), got 1e\+39",
        ),
        ({"recurrent_scale": 1e5, "dtype": jnp.float16}, r"recurrent_scale: expected at most 6.6e\+04 \(float16's"),
    ],
)
def test_a_scale_or_radius_the_parameters_dtype_cannot_hold_is_refused_by_name(key, cell, kwargs, message):
    """Finite in Python but past the dtype's largest value: W_s was inf (then "training diverged") without a word."""
    with pytest.raises(ValueError, match=message):
        cell.init(key, 3, 5, 2, **kwargs)


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
def test_a_radius_float64_can_hold_stays_legal(key, x64, cell):
    params = cell.init(key, 3, 5, 2, spectral_radius=1e300, dtype=jnp.float64)
    assert np.isfinite(np.asarray(params.w_s)).all()


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
@pytest.mark.parametrize(
    ("bad_key", "message"),
    [
        (0, r"got int 0$"),  # a seed where the key goes: JAX's "invalid PRNG key data ... Got 0"
        (np.uint32(7), r"got uint32 array of shape \(\)$"),
        (jnp.zeros((3,), jnp.uint32), r"got uint32 array of shape \(3,\)$"),
        (jnp.zeros((2,), jnp.float32), r"got float32 array of shape \(2,\)$"),
        ([0, 0], r"got list \[0, 0\]$"),
        (jax.random.split(jax.random.key(0)), r"got key<fry> array of shape \(2,\)$"),  # a batch of keys
        (jax.random.split(jax.random.PRNGKey(0)), r"got uint32 array of shape \(2, 2\)$"),
    ],
    ids=["int", "uint32-scalar", "uint32[3]", "float32[2]", "list", "batch-of-keys", "batch-of-legacy-keys"],
)
def test_what_is_not_one_prng_key_is_refused_by_name(cell, bad_key, message):
    prefix = r"key: expected a JAX PRNG key \(jax.random.key\(seed\) or jax.random.PRNGKey\(seed\)\), "
    with pytest.raises(TypeError, match=prefix + message):
        cell.init(bad_key, 3, 5, 2)


@pytest.mark.parametrize("cell", CELLS.values(), ids=CELLS.keys())
def test_typed_and_legacy_keys_draw_the_same_parameters(cell):
    """jax.random.key(seed), jax.random.PRNGKey(seed) (raw uint32[2]) and its NumPy copy are one key."""
    typed = cell.init(jax.random.key(3), 3, 5, 2)
    for legacy in (jax.random.PRNGKey(3), np.asarray(jax.random.PRNGKey(3))):
        jax.tree.map(np.testing.assert_array_equal, cell.init(legacy, 3, 5, 2), typed)


def test_float64_without_x64_is_a_clear_error(key):
    with pytest.raises(ValueError, match=r"dtype: float64 needs 64-bit JAX"):
        rj.elman.init(key, 3, 5, 2, dtype=jnp.float64)
