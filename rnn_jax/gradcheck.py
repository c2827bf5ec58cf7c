"""The gradient checker: every way of computing BPTT gradients, compared in float64.

For a model and a configuration it computes the gradient of the loss (before any clipping) by

    autodiff      reverse mode, `jax.grad` through `lax.scan` (the reference);
    bptt          the hand-derived equations of `rnn_jax.bptt` (no `jax.grad` at all; Elman);
    custom_vjp    `jax.grad` through ``unroll(..., backward="bptt")``, the hand-derived backward pass of
                  every single-layer cell (Elman, LSTM, GRU) as a custom VJP, the training fast path;
    fused_vjp     `jax.grad` through ``unroll(..., backward="fused")``, the recursions of every single-layer
                  cell as Pallas kernels (`rnn_jax.fused`; on a GPU only where they compile: H <= 128 for
                  Elman, 64 for the gated cells);
    remat         `jax.grad` through the unroll (or the deep network) rematerialised every `REMAT_CHECK_EVERY`
                  steps, whose backward pass recomputes each chunk of steps from its kept entering state;
    forward       forward mode: `jax.jvp` along random directions v, compared with <grad, v>;
    finite_diff   central differences (f(p + h e) - f(p - h e)) / 2h, on every entry of each
                  parameter up to ``max_entries`` entries and along random directions beyond;

(with ``layers`` > 1, ``bidirectional``, ``residual`` or ``learn_initial_state`` the model is the
deep network of `rnn_jax.deep`, checked by autodiff, remat, forward mode and finite differences), and, for
TBPTT(k1, k2), the truncated gradient (the sum over windows, at fixed parameters, with
each window's entering state held fixed) against finite differences of that same truncated
objective, so truncation is checked against what it claims to compute, not against the full
gradient.

Errors are reported per parameter: the largest absolute difference, and the relative error
``max_i |a_i - b_i| / max(max_i |a_i|, max_i |b_i|, floor)`` (relative to the parameter's largest
gradient entry, so that tiny entries do not blow it up). A gradient smaller than a floor is judged
in absolute terms instead, rtol * floor: 1e-23 for the analytic paths (floor 1e-13), and 1e-10 for
finite differences (floor 1e-4), whose round-off alone is eps |f| / h ~ 2e-11 |f|, so that a
gradient that is exactly zero (dE/dW_s for T = 1 from s_0 = 0) is not failed on that noise.
Tolerances, all in float64:

    analytic pairs (bptt, custom_vjp, fused_vjp, remat, forward vs autodiff)   1e-10: the paths differ only
        in the order of float64 round-off (eps = 2.2e-16) over T steps of matrix products;
    finite differences                                                  1e-6: central differences with step
        h = 1e-5 carry a truncation error ~ h^2 |f'''| ~ 1e-10 and a round-off error
        ~ eps |f| / h ~ 1e-11 relative; 1e-6 leaves room for ill-conditioned draws (relu near
        its kink, long lags) while a wrong term (a missing phi', a lag off by one) shows as
        errors of order 1e-1 to 1.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from rnn_jax import _checks, activations, bptt, cells, deep, fused
from rnn_jax.config import GradcheckConfig, check_choices
from rnn_jax.unroll import sequence_mask, unroll


class Tolerance(NamedTuple):
    """Pass when max |a - b| <= rtol * max(max |a|, max |b|, floor)."""

    rtol: float
    floor: float  # the gradient size below which errors are judged in absolute terms


TOLERANCES = {"analytic": Tolerance(1e-10, 1e-13), "finite_diff": Tolerance(1e-6, 1e-4)}
REMAT_CHECK_EVERY = 2  # the remat path keeps the state every 2 steps: T odd leaves a shorter last chunk


class Comparison(NamedTuple):
    """One parameter's agreement between a method and its reference."""

    trial: int
    method: str  # e.g. "bptt"
    reference: str  # e.g. "autodiff"
    param: str  # e.g. "w_s"
    max_abs: float
    max_rel: float
    tolerance: float
    passed: bool
    worst_entry: tuple[int, ...]  # index of the largest |a - b| in the parameter (or (direction,))
    value: float  # the method's value there
    reference_value: float  # the reference's value there


@dataclasses.dataclass(frozen=True)
class Trial:
    """One drawn configuration."""

    index: int
    activation: str
    loss: str
    input_size: int
    hidden: int
    output_size: int
    seq_len: int
    batch_size: int
    lengths: list[int] | None


class Report(NamedTuple):
    """What `check_gradients` returns."""

    passed: bool
    trials: list[Trial]
    comparisons: list[Comparison]

    def worst(self) -> dict[str, Comparison]:
        """The comparison with the largest relative error, per method pair."""
        worst: dict[str, Comparison] = {}
        for c in self.comparisons:
            pair = f"{c.method} vs {c.reference}"
            if pair not in worst or c.max_rel > worst[pair].max_rel:
                worst[pair] = c
        return worst

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: pass/fail, the trials, every comparison, the worst per pair."""
        return {
            "passed": self.passed,
            "tolerances": {name: t._asdict() for name, t in TOLERANCES.items()},
            "trials": [dataclasses.asdict(t) for t in self.trials],
            "comparisons": [c._asdict() for c in self.comparisons],
            "worst": {pair: c._asdict() for pair, c in self.worst().items()},
        }


def _compare(trial, method, reference, names, got, want, tolerance: Tolerance) -> list[Comparison]:
    out = []
    for name, a, b in zip(names, got, want, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        diff = np.abs(a - b)
        scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)), tolerance.floor)
        max_abs = float(np.max(diff, initial=0.0))
        max_rel = max_abs / scale
        passed = bool(max_rel <= tolerance.rtol)
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape)) if diff.size else ()
        out.append(
            Comparison(
                trial, method, reference, name, max_abs, max_rel, tolerance.rtol, passed, worst,
                float(a[worst]) if diff.size else 0.0, float(b[worst]) if diff.size else 0.0,
            )
        )  # fmt: skip
    return out


def _draw_trial(config: GradcheckConfig, index: int, rng: np.random.Generator) -> Trial:
    def size(value: int, low: int = 1) -> int:
        return int(rng.integers(low, value + 1)) if config.trials > 1 else value

    k2 = config.tbptt_k2 or 1
    seq_len = size(max(config.seq_len, k2), low=k2)
    if config.tbptt_k1:  # a stream of whole updates
        seq_len = max(config.tbptt_k1, seq_len - seq_len % config.tbptt_k1)
    batch = size(config.batch_size)
    activation = config.activation if config.activation != "random" else str(rng.choice(list(activations.NAMED)))
    loss = config.loss if config.loss != "random" else str(rng.choice(["squared_error", "cross_entropy"]))
    variable = config.lengths == "variable" or (config.lengths == "random" and bool(rng.integers(0, 2)))
    if config.tbptt_k1:
        variable = False  # a stream has no padding
    lengths = [int(n) for n in rng.integers(0, seq_len + 1, batch)] if variable else None
    d, h, o = size(config.input_size), size(config.hidden), size(config.output_size)  # in this order: the seeds' trials
    if loss == "cross_entropy" and o == 1:  # a softmax over one class has a zero gradient: the check would be empty
        loss = "squared_error"
    return Trial(index, activation, loss, d, h, o, seq_len, batch, lengths)


def _is_deep(config: GradcheckConfig) -> bool:
    return config.layers != 1 or config.bidirectional or config.residual or config.learn_initial_state


def _leaf_names(params) -> list[str]:
    """Each leaf's name: the field (``w_s``) for a cell's Params, the path (``layers[1].backward.w_s``) deeper."""
    paths = jax.tree_util.tree_flatten_with_path(params)[0]
    return [jax.tree_util.keystr(path).removeprefix(".") for path, _ in paths]


def _problem(config: GradcheckConfig, trial: Trial, key: jax.Array):
    """float64 parameters (with non-zero biases, and initial states when learnable), inputs and targets."""
    cell = cells.get(config.model)
    k_params, k_bias, k_x, k_t = jax.random.split(key, 4)
    if _is_deep(config):
        params = deep.init(
            k_params, cell, trial.input_size, trial.hidden, trial.output_size, layers=config.layers,
            bidirectional=config.bidirectional, learn_initial_state=config.learn_initial_state, dtype=jnp.float64,
        )  # fmt: skip
    else:
        params = cell.init(k_params, trial.input_size, trial.hidden, trial.output_size, dtype=jnp.float64)
    leaves, tree = jax.tree.flatten(params)
    bias_keys = jax.random.split(k_bias, len(leaves))
    leaves = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape, jnp.float64) if leaf.ndim == 1 else leaf
        for leaf, k in zip(leaves, bias_keys, strict=True)
    ]
    params = jax.tree.unflatten(tree, leaves)
    shape = (trial.seq_len, trial.batch_size)
    xs = jax.random.normal(k_x, (*shape, trial.input_size), jnp.float64)
    if trial.loss == "cross_entropy":
        targets = jax.random.randint(k_t, shape, 0, trial.output_size)
    else:
        targets = jax.random.normal(k_t, (*shape, trial.output_size), jnp.float64)
    return cell, params, xs, targets


class _Probes(NamedTuple):
    """Directions in the flat parameter vector, each supported on one parameter."""

    rows: jax.Array  # [R, P] directions
    leaf: list[int]  # [R] the parameter each row perturbs
    entries: list[bool]  # per parameter: rows are its unit vectors (every entry), else random directions


def _probes(params, key: jax.Array, max_entries: int, directions: int, every_entry: bool) -> _Probes:
    leaves = jax.tree.leaves(params)
    total = sum(leaf.size for leaf in leaves)
    rows, owner, entries, start = [], [], [], 0
    for i, leaf in enumerate(leaves):
        exhaustive = every_entry and leaf.size <= max_entries
        if exhaustive:
            block = jnp.eye(leaf.size, dtype=jnp.float64)
        else:
            block = jax.random.normal(jax.random.fold_in(key, i), (directions, leaf.size), jnp.float64)
        rows.append(jnp.pad(block, ((0, 0), (start, total - start - leaf.size))))
        owner += [i] * block.shape[0]
        entries.append(exhaustive)
        start += leaf.size
    return _Probes(jnp.concatenate(rows), owner, entries)


def _directional(probes: _Probes, gradient) -> jax.Array:
    """<gradient, v> for every probe direction v: [R]."""
    flat, _ = ravel_pytree(gradient)
    return probes.rows @ flat


def _central_differences(f, params, probes: _Probes, h: float) -> jax.Array:
    """(f(p + h v) - f(p - h v)) / 2h for every probe direction v, in one jitted vmap: [R]."""
    flat, unravel = ravel_pytree(params)
    f_flat = jax.jit(jax.vmap(lambda v: (f(unravel(flat + h * v)) - f(unravel(flat - h * v))) / (2 * h)))
    return f_flat(probes.rows)


def _compare_probes(trial, method, reference, params, probes, got, want, tolerance) -> list[Comparison]:
    """Per parameter: rows that are unit vectors compare as the parameter's shape, others per direction."""
    out = []
    owner = np.asarray(probes.leaf)
    for i, (name, leaf) in enumerate(zip(_leaf_names(params), jax.tree.leaves(params), strict=True)):
        a, b = np.asarray(got)[owner == i], np.asarray(want)[owner == i]
        if probes.entries[i]:
            a, b = a.reshape(leaf.shape), b.reshape(leaf.shape)
        out += _compare(trial, method, reference, [name], [a], [b], tolerance)
    return out


def _check_full(config, trial, cell, params, xs, targets, key) -> list[Comparison]:
    names = _leaf_names(params)
    lengths = None if trial.lengths is None else jnp.asarray(trial.lengths, jnp.int32)
    mask = None if lengths is None else sequence_mask(lengths, trial.seq_len)
    if isinstance(params, deep.DeepParams):
        apply = functools.partial(deep.apply, cell=cell, activation=trial.activation, lengths=lengths,
                                  residual=config.residual)  # fmt: skip

        def run(p, xs, backward="autodiff", remat=None):
            return apply(p, xs, remat=remat)

    else:
        run = functools.partial(unroll, activation=trial.activation, lengths=lengths, cell=cell)
    custom_vjp = not isinstance(params, deep.DeepParams)  # every single-layer cell has a hand-derived custom VJP
    hand = config.model == "elman" and custom_vjp
    kernels = custom_vjp and fused.supported(config.hidden, cell)
    k_fwd, k_fd = jax.random.split(key)
    forward_probes = _probes(params, k_fwd, config.max_entries, config.directions, every_entry=False)
    fd_probes = _probes(params, k_fd, config.max_entries, config.directions, every_entry=True)

    def loss(p, backward="autodiff", remat=None):
        outputs = run(p, xs, backward=backward, remat=remat).outputs
        return bptt.loss_value(trial.loss, outputs, targets, mask, config.reduction)

    @jax.jit
    def analytic(p):
        results = {"autodiff": jax.grad(loss)(p)}
        flat, unravel = ravel_pytree(p)
        along = jax.vmap(lambda v: jax.jvp(lambda q: loss(unravel(q)), (flat,), (v,))[1])
        results["forward"] = along(forward_probes.rows)
        if hand:
            results["bptt"] = bptt.loss_and_gradients(
                p, xs, targets, loss=trial.loss, reduction=config.reduction, activation=trial.activation,
                lengths=lengths,
            )[1]  # fmt: skip
        if custom_vjp:
            results["custom_vjp"] = jax.grad(functools.partial(loss, backward="bptt"))(p)
        if kernels:
            results["fused_vjp"] = jax.grad(functools.partial(loss, backward="fused"))(p)
        results["remat"] = jax.grad(functools.partial(loss, remat=REMAT_CHECK_EVERY))(p)
        return results

    results = analytic(params)
    reference = results["autodiff"]
    tol, fd_tol = TOLERANCES["analytic"], TOLERANCES["finite_diff"]
    out = []
    for method in ("bptt", "custom_vjp", "fused_vjp", "remat"):
        if method in results:
            got, want = jax.tree.leaves(results[method]), jax.tree.leaves(reference)  # a deep model's are nested
            out += _compare(trial.index, method, "autodiff", names, got, want, tol)
    want = _directional(forward_probes, reference)
    out += _compare_probes(trial.index, "forward", "autodiff", params, forward_probes, results["forward"], want, tol)
    numeric = _central_differences(loss, params, fd_probes, config.fd_step)
    got = _directional(fd_probes, reference)
    out += _compare_probes(trial.index, "autodiff", "finite_diff", params, fd_probes, got, numeric, fd_tol)
    return out


def _check_truncated(config, trial, cell, params, xs, targets, key) -> list[Comparison]:
    k1, k2 = bptt.check_truncation(config.tbptt_k1, config.tbptt_k2)
    names = type(params)._fields
    extra = dict(loss=trial.loss, reduction=config.reduction, activation=trial.activation, cell=cell)
    s0 = cell.initial_state(params, trial.batch_size)

    # The truncated objective straight from its definition, independent of the window machinery
    # (padding, masks, carries) that training uses: update u scores the stream's steps
    # [u k1, (u + 1) k1), back-propagating from step start_u = max(0, (u + 1) k1 - k2), where the
    # state s_{start_u - 1} of the untruncated forward pass at the base parameters is held fixed.
    base_states = unroll(params, xs, activation=trial.activation, cell=cell).states

    def truncated_objective(p):
        total = jnp.zeros((), jnp.float64)
        for u in range(xs.shape[0] // k1):
            start, end = max(0, (u + 1) * k1 - k2), (u + 1) * k1
            entering = s0 if start == 0 else jax.tree.map(lambda s, i=start: s[i - 1], base_states)
            outputs = unroll(p, xs[start:end], activation=trial.activation, initial_state=entering, cell=cell).outputs
            total = total + bptt.loss_value(trial.loss, outputs[-k1:], targets[end - k1 : end], None, config.reduction)
        return total

    kernels = fused.supported(config.hidden, cell)

    @jax.jit
    def summed_gradients(p):
        results = {}
        for backward in ("autodiff", "bptt", *(("fused",) if kernels else ())):
            _, grads, _ = bptt.tbptt_gradients(p, xs, targets, k1, k2, backward=backward, **extra)
            results[backward] = jax.tree.map(lambda g: jnp.sum(g, axis=0), grads)
        return results

    results = summed_gradients(params)
    out = []
    for backward, method in (("bptt", "tbptt custom_vjp"), ("fused", "tbptt fused_vjp")):
        if backward in results:
            out += _compare(trial.index, method, "tbptt autodiff", names, results[backward], results["autodiff"],
                            TOLERANCES["analytic"])  # fmt: skip
    probes = _probes(params, key, config.max_entries, config.directions, every_entry=True)
    numeric = _central_differences(truncated_objective, params, probes, config.fd_step)
    got = _directional(probes, results["autodiff"])
    out += _compare_probes(trial.index, "tbptt autodiff", "finite_diff of truncated objective", params, probes, got,
                           numeric, TOLERANCES["finite_diff"])  # fmt: skip
    return out


def check_gradients(config: GradcheckConfig) -> Report:
    """Runs every comparison on ``config.trials`` configurations, in float64.

    Raises:
      ValueError: for bad sizes, an unknown model, k1 > k2, a seed outside [0, 2**63), an ``fd_step`` that is not a
        finite number > 0, or loss="cross_entropy" with output_size 1 (a softmax over one class has a zero
        gradient: every check would pass on zeros).
      TypeError: for ``bidirectional``, ``residual`` or ``learn_initial_state`` not a bool (a string such as "no"
        is truthy: it checked the deep network it declined).
    """
    check_choices(config)
    for name in ("bidirectional", "residual", "learn_initial_state"):
        _checks.boolean(name, getattr(config, name))
    for name in ("input_size", "hidden", "output_size", "seq_len", "batch_size", "trials", "max_entries", "directions"):
        _checks.positive_int(name, getattr(config, name))
    if config.loss == "cross_entropy" and config.output_size < 2:
        raise ValueError(
            f"output_size: cross_entropy needs output_size >= 2 (a softmax over one class has a zero gradient, so "
            f"every check would pass on zeros), got {config.output_size}"
        )
    if (config.tbptt_k1 is None) != (config.tbptt_k2 is None):
        raise ValueError("tbptt_k1, tbptt_k2: give both or neither")
    if config.tbptt_k1 is not None:
        bptt.check_truncation(config.tbptt_k1, config.tbptt_k2)
    _checks.positive_int("layers", config.layers)
    deep.check_residual(config.residual, config.layers)
    if _is_deep(config) and config.tbptt_k1 is not None:
        raise ValueError("tbptt_k1: the truncated check runs the single-layer network; drop it or the deep options")
    _checks.positive_real("fd_step", config.fd_step)
    cells.get(config.model)
    rng = np.random.default_rng(_checks.seed("seed", config.seed))
    trials, comparisons = [], []
    with jax.enable_x64(True):
        for index in range(config.trials):
            trial = _draw_trial(config, index, rng)
            trials.append(trial)
            key = jax.random.fold_in(jax.random.key(config.seed), index)
            k_problem, k_check = jax.random.split(key)
            problem = _problem(config, trial, k_problem)
            comparisons += _check_full(config, trial, *problem, k_check)
            if config.tbptt_k1 is not None:
                comparisons += _check_truncated(config, trial, *problem, jax.random.fold_in(k_check, 1))
    return Report(all(c.passed for c in comparisons), trials, comparisons)


def format_table(report: Report) -> str:
    """The per-parameter worst case over trials, one row per (method pair, parameter), for people."""
    rows: dict[tuple[str, str], Comparison] = {}
    for c in report.comparisons:
        key = (f"{c.method} vs {c.reference}", c.param)
        if key not in rows or c.max_rel > rows[key].max_rel:
            rows[key] = c
    width = max(len(pair) for pair, _ in rows)
    pw = max(6, *(len(param) for _, param in rows))  # parameter names: "w_s", or "layers[1].backward.w_s"
    lines = [f"{'check':<{width}}  {'param':<{pw}} {'max abs err':>12} {'max rel err':>12} {'tolerance':>10}  result"]
    for (pair, param), c in rows.items():
        verdict = "pass" if c.passed else "FAIL"
        lines.append(
            f"{pair:<{width}}  {param:<{pw}} {c.max_abs:12.3e} {c.max_rel:12.3e} {c.tolerance:10.0e}  {verdict}"
        )
    failed = sum(not c.passed for c in report.comparisons)
    lines.append(
        f"{len(report.trials)} trial(s), {len(report.comparisons)} comparisons, {failed} failed: "
        + ("PASSED" if report.passed else "FAILED")
    )
    return "\n".join(lines)


def explain(report: Report) -> str:
    """The largest disagreement found, where it occurred, and the trial's configuration."""
    worst = max(report.comparisons, key=lambda c: c.max_rel)
    trial = report.trials[worst.trial]
    return (
        f"largest disagreement: {worst.method} vs {worst.reference} on {worst.param}{list(worst.worst_entry)}: "
        f"{worst.value:.12g} vs {worst.reference_value:.12g} (abs {worst.max_abs:.3e}, rel {worst.max_rel:.3e}, "
        f"tolerance {worst.tolerance:.0e})\n"
        f"in trial {trial.index}: {dataclasses.asdict(trial)}"
    )
