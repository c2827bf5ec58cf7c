"""Losses reduce over exactly the valid steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rnn_jax as rj


def _data(key):
    k1, k2, k3 = jax.random.split(key, 3)
    outputs = jax.random.normal(k1, (5, 3, 4))
    targets = jax.random.normal(k2, (5, 3, 4))
    labels = jax.random.randint(k3, (5, 3), 0, 4)
    mask = rj.sequence_mask(jnp.array([5, 2, 0], jnp.int32), 5)
    return outputs, targets, labels, mask


def test_squared_error_sum_is_the_textbook_sum(key):
    outputs, targets, _, mask = _data(key)
    want = sum(
        float(np.sum((np.asarray(targets)[t, b] - np.asarray(outputs)[t, b]) ** 2))
        for t in range(5)
        for b in range(3)
        if mask[t, b]
    )
    np.testing.assert_allclose(rj.squared_error(outputs, targets, mask, "sum"), want, rtol=1e-6)
    # the mean is per valid entry: 7 valid steps times O = 4 outputs
    np.testing.assert_allclose(rj.squared_error(outputs, targets, mask, "mean"), want / (7 * 4), rtol=1e-6)


def test_cross_entropy_counts_only_valid_steps(key):
    outputs, _, labels, mask = _data(key)
    logp = np.asarray(jax.nn.log_softmax(outputs))
    terms = [-logp[t, b, labels[t, b]] for t in range(5) for b in range(3) if mask[t, b]]
    np.testing.assert_allclose(rj.cross_entropy(outputs, labels, mask, "sum"), sum(terms), rtol=1e-6)
    np.testing.assert_allclose(rj.cross_entropy(outputs, labels, mask, "mean"), np.mean(terms), rtol=1e-6)


@pytest.mark.parametrize("loss", ["squared_error", "cross_entropy"])
def test_masked_entries_do_not_matter(key, loss):
    outputs, targets, labels, mask = _data(key)
    noisy = jnp.where(mask[..., None], outputs, 1e4)
    if loss == "squared_error":
        a = rj.squared_error(outputs, targets, mask)
        b = rj.squared_error(noisy, jnp.where(mask[..., None], targets, -3.0), mask)
    else:
        a = rj.cross_entropy(outputs, labels, mask)
        b = rj.cross_entropy(noisy, jnp.where(mask, labels, 0), mask)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_empty_mask_gives_zero_not_nan(key):
    outputs, targets, labels, _ = _data(key)
    empty = jnp.zeros((5, 3), bool)
    assert float(rj.squared_error(outputs, targets, empty)) == 0.0
    assert float(rj.cross_entropy(outputs, labels, empty)) == 0.0


def test_bad_shapes_get_clear_errors(key):
    outputs, targets, labels, mask = _data(key)
    with pytest.raises(ValueError, match=r"targets: expected the outputs' shape \(5, 3, 4\), got \(5, 3\)"):
        rj.squared_error(outputs, targets[..., 0])
    with pytest.raises(ValueError, match=r"mask: expected shape \(5, 3\)"):
        rj.squared_error(outputs, targets, mask[:, :2])
    with pytest.raises(TypeError, match=r"labels: expected integer class indices"):
        rj.cross_entropy(outputs, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"mask: expected shape \(5, 3\)"):  # before the labels' range is read
        rj.cross_entropy(outputs, labels, mask[:, :2])
    with pytest.raises(ValueError, match=r"reduction: expected 'sum' or 'mean', got 'max'"):
        rj.squared_error(outputs, targets, reduction="max")


def test_labels_out_of_range_are_refused_where_valid_and_never_looked_up_in_padding(key):
    """An out-of-range label gives NaN (or, negative, another class's loss) inside the lookup: concrete labels are
    checked where the mask holds, and the padding may hold any id, such as -1 or a PAD past O, without a NaN."""
    outputs, _, labels, mask = _data(key)
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, O=4\), got values in \[0, 4\]"):
        rj.cross_entropy(outputs, labels.at[0, 0].set(4))
    with pytest.raises(ValueError, match=r"labels: .* where the mask holds, got values in \[-1, "):
        rj.cross_entropy(outputs, labels.at[0, 0].set(-1), mask)
    padded = jnp.where(mask, labels, 99)  # mask row 2 is empty, row 1 valid for 2 steps
    for reduction in ("sum", "mean"):
        loss = rj.cross_entropy(outputs, padded, mask, reduction)
        assert float(loss) == float(rj.cross_entropy(outputs, labels, mask, reduction))
        grads = jax.grad(lambda y, r=reduction: rj.cross_entropy(y, padded, mask, r))(outputs)
        assert bool(jnp.isfinite(grads).all())
        assert float(jax.jit(rj.cross_entropy, static_argnums=3)(outputs, padded, mask, reduction)) == float(loss)


@pytest.mark.parametrize(
    ("loss", "args", "error", "message"),
    [
        ("squared_error", ([[1.0, 2.0]], jnp.ones((1, 2))), TypeError, r"outputs: expected an array .*, got list"),
        ("squared_error", (jnp.ones((1, 2)), [[1.0, 2.0]]), TypeError, r"targets: expected an array .*, got list"),
        ("squared_error", (None, jnp.ones((1, 2))), TypeError, r"outputs: expected an array .*, got NoneType None"),
        (
            "squared_error",
            (jnp.ones(()), jnp.ones(())),
            ValueError,
            r"outputs: expected rank >= 1 \[..., O\], got rank 0",
        ),
        (
            "cross_entropy",
            ([[1.0, 2.0]], jnp.zeros(1, jnp.int32)),
            TypeError,
            r"logits: expected an array .*, got list",
        ),
        ("cross_entropy", (jnp.ones((1, 2)), [0]), TypeError, r"labels: expected an array .*, got list \[0\]"),
        ("cross_entropy", (jnp.ones(()), jnp.zeros((), jnp.int32)), ValueError, r"logits: expected rank >= 1"),
        ("by_name", ("squared_error", [[1.0]], jnp.ones((1, 1))), TypeError, r"outputs: expected an array"),
    ],
    ids=[
        "outputs-list",
        "targets-list",
        "outputs-none",
        "outputs-rank-0",
        "logits-list",
        "labels-list",
        "logits-rank-0",
        "by-name-list",
    ],  # fmt: skip
)
def test_lists_none_and_scalars_are_named_errors(loss, args, error, message):
    """Lists failed as AttributeError, "Cannot determine dtype" or "unsupported operand"; None outputs blamed the
    targets; rank-0 outputs were "axis -1 is out of bounds"."""
    with pytest.raises(error, match=message):
        getattr(rj.losses, loss)(*args)


@pytest.mark.parametrize("loss", ["squared_error", "cross_entropy"])
def test_negative_or_nan_mask_weights_are_refused_when_concrete(key, loss):
    """A negative weight gave a negative loss, a NaN one a NaN loss; bool and 0/1 masks pass, traced ones are not
    read."""
    outputs, targets, labels, mask = _data(key)
    fn, second = (rj.squared_error, targets) if loss == "squared_error" else (rj.cross_entropy, labels)
    weights = mask.astype(jnp.float32)
    with pytest.raises(ValueError, match=r"mask: expected values >= 0 \(bool, or 0/1 weights\), got values in \[-3"):
        fn(outputs, second, weights.at[0, 0].set(-3.0))
    with pytest.raises(
        ValueError, match=r"mask: expected finite values, found 1 NaN/Inf entries; first at index \(1, 2\)"
    ):
        fn(outputs, second, weights.at[1, 2].set(jnp.nan))
    assert float(fn(outputs, second, weights)) == float(fn(outputs, second, mask))
    assert float(jax.jit(fn)(outputs, second, weights)) == pytest.approx(float(fn(outputs, second, mask)), rel=1e-6)
