"""Where the Elman train step's reverse scan spends its time on a CPU, and whether carrying its errors transposed pays.

Question. On a CPU the Elman custom VJP's reverse scan (`rnn_jax.bptt.concatenated_backward`, the weight sums inside
the scan, unrolled by 2) does per step one error product [B, O + H] @ [O + H, H] and the weight sums
dW_[x;s] += [x_t, s_{t-1}]^T delta_t and dW_y += s_t^T g_t. XLA:CPU gives the error product to YNNPACK but the
weight-sum products, which contract the batch dimension of both operands, to Eigen. Written with the errors carried
transposed, delta_t^T [H, B],

    a_t^T = [W_y, W_s] [g_t^T ; delta_{t+1}^T],    delta_t^T = a_t^T * phi'(s_t)^T,
    dW_[x;s]^T += delta_t^T [x_t, s_{t-1}],       dW_y^T += g_t^T s_t,

every product of the step is in the standard [M, K] @ [K, N] form that XLA:CPU gives to YNNPACK. Is it faster, per
step ("columns") or with the sums formed over pairs of steps ([H, 2B] @ [2B, D + H], "columns-pairs")? And how is
the library's step's time split between its parts?

Method. The scans run alone, jitted, on the same states, inputs and output errors (drawn at random), timed with the
harness's interleaved sampler (`rnn_jax.bench.interleaved_samples`); the library's form is
`bptt.concatenated_backward` itself, and the transposed forms must give its parameter gradients (relative 1e-4) or
the study stops. The parts are the library's step cut short: the error product alone, then with phi', then with
dW_[x;s], then everything.

Command:
  python -m experiments.reverse_layout            # (256,64,128,512,128) and (64,256,32,128,32), 11 repeats
  python -m experiments.reverse_layout --quick    # one small size, 3 repeats

Expected runtime on 2 CPU cores: about 30 s (--quick: about 10 s).
Expected result (2-core Intel Xeon, 2026-11-29, two runs; results/reverse_layout/): "columns" 1.08-1.17x the
library's time, "columns-pairs" 0.96-0.98x at (256,64,128,512,128) and 0.93-1.00x at (64,256,32,128,32); the weight
sums about 60% of the library's reverse step at the large size (about 1 ms a step for the error product and phi',
2.3-2.5 in all).
Writes results.json (medians, ratios, parts) and summary.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from experiments import _common
from rnn_jax import bptt
from rnn_jax.cells import elman

SIZES = [(256, 64, 128, 512, 128), (64, 256, 32, 128, 32)]  # (B, T, D, H, O)
QUICK_SIZES = [(8, 16, 4, 16, 4)]
PARTS = ("error product", "+ phi'", "+ dW_[x;s]", "+ dW_y, db")


def _problem(size: tuple[int, ...], seed: int = 0):
    """Parameters, inputs xs [T, B, D], states [T, B, H] (tanh of normal draws), s_0 and output errors g [T, B, O]."""
    batch, steps, width, hidden, out = size
    keys = jax.random.split(jax.random.key(seed), 4)
    params = elman.init(keys[0], width, hidden, out)
    xs = jax.random.normal(keys[1], (steps, batch, width))
    states = jnp.tanh(jax.random.normal(keys[2], (steps, batch, hidden)))
    g = jax.random.normal(keys[3], (steps, batch, out))
    return params, xs, states, jnp.zeros((batch, hidden)), g


def library(params, xs, states, s0, g):
    """`bptt.concatenated_backward` as the CPU custom VJP runs it in a train step: sums inside, unrolled by 2, no
    error from the states or the final state (the loss reads neither)."""
    grads = bptt.concatenated_backward(
        params, xs, s0, None, states, g, None, None, "tanh", bptt.CPU_REVERSE_UNROLL, sum_in_scan=True
    )
    return grads.params


def columns(params, xs, states, s0, g, pairs: bool = False):
    """The same parameter gradients with the errors carried transposed, delta_t^T [H, B]; with ``pairs`` the weight
    sums are formed once per two steps (T even)."""
    steps, batch, hidden = states.shape
    width = xs.shape[-1]
    s_prev = bptt.previous_states(s0, states)
    z = jnp.concatenate([xs, s_prev], axis=-1)  # [T, B, D + H]
    w_back_t = jnp.concatenate([params.w_y, params.w_s], axis=1)  # [H, O + H] = ([W_y^T ; W_s^T])^T
    g_t = jnp.swapaxes(g, 1, 2)  # [T, O, B]
    k = 2 if pairs else 1

    def body(carry, inputs):
        delta_next, (d_w_in, d_w_y, d_b) = carry  # [H, B]; transposed sums
        z_c, s_c, g_c = inputs  # [k, B, D + H], [k, B, H], [k, O, B]
        deltas = [None] * k
        for j in reversed(range(k)):
            a = w_back_t @ jnp.concatenate([g_c[j], delta_next], axis=0)  # [H, B]
            delta_next = deltas[j] = a * (1 - s_c[j] * s_c[j]).T
        d = jnp.concatenate(deltas, axis=1)  # [H, k B]
        g_rows = jnp.concatenate(list(g_c), axis=1)  # [O, k B]
        z_rows, s_rows = z_c.reshape(k * batch, -1), s_c.reshape(k * batch, hidden)
        return (delta_next, (d_w_in + d @ z_rows, d_w_y + g_rows @ s_rows, d_b + jnp.sum(d, axis=1))), None

    def chunks(a):
        return a.reshape(steps // k, k, *a.shape[1:])

    zeros = functools.partial(jnp.zeros, dtype=states.dtype)
    init = (zeros((hidden, batch)), (zeros((hidden, width + hidden)), zeros((g.shape[-1], hidden)), zeros(hidden)))
    (_, (d_w_in, d_w_y, d_b)), _ = jax.lax.scan(
        body, init, (chunks(z), chunks(states), chunks(g_t)), reverse=True, unroll=1 if pairs else 2
    )
    d_w_in = d_w_in.T
    return elman.ElmanParams(d_w_in[:width], d_w_in[width:], d_b, d_w_y.T, jnp.sum(g, axis=(0, 1)))


def part(params, xs, states, s0, g, level: int):
    """The library's reverse step cut short after ``PARTS[level]`` (the states, inputs and errors as given)."""
    s_prev = bptt.previous_states(s0, states)
    w_back = jnp.concatenate([params.w_y.T, params.w_s.T], axis=0)

    def body(carry, inputs):
        delta_next, (d_w_in, d_w_y, d_b) = carry
        x_t, s_t, s_prev_t, g_t = inputs
        delta = jnp.concatenate([g_t, delta_next], axis=1) @ w_back
        if level >= 1:
            delta = delta * (1 - s_t * s_t)
        if level >= 2:
            d_w_in = d_w_in + jnp.concatenate([x_t, s_prev_t], axis=1).T @ delta
        if level >= 3:
            d_w_y, d_b = d_w_y + s_t.T @ g_t, d_b + jnp.sum(delta, axis=0)
        return (delta, (d_w_in, d_w_y, d_b)), None

    width, hidden = xs.shape[-1], states.shape[-1]
    init = (jnp.zeros_like(s0), (jnp.zeros((width + hidden, hidden)), jnp.zeros_like(params.w_y), jnp.zeros(hidden)))
    carry, _ = jax.lax.scan(body, init, (xs, states, s_prev, g), reverse=True, unroll=bptt.CPU_REVERSE_UNROLL)
    return carry


def main() -> None:
    args = _common.parse_args("reverse_layout", __doc__)
    out = _common.prepare(args.out)
    sizes, repeats = (QUICK_SIZES, 3) if args.quick else (SIZES, 11)
    forms = {"library (rows)": library, "columns": columns, "columns-pairs": functools.partial(columns, pairs=True)}
    rows = []
    for size in sizes:
        problem = _problem(size)
        compiled = {name: jax.jit(f) for name, f in forms.items()}
        want = compiled["library (rows)"](*problem)
        for name, f in compiled.items():
            if not _common.trees_agree(f(*problem), want):
                raise SystemExit(f"reverse_layout: {name} disagrees with bptt.concatenated_backward at {size}")
        parts = {p: jax.jit(functools.partial(part, level=i)) for i, p in enumerate(PARTS)}
        calls = {**compiled, **parts}
        times = _common.interleaved({name: functools.partial(f, *problem) for name, f in calls.items()}, repeats, 0.02)
        median = {name: t[0] for name, t in times.items()}  # ms
        rows.append({
            "B": size[0], "T": size[1], "D": size[2], "H": size[3], "O": size[4],
            "median_ms": {name: median[name] for name in forms},
            "over_library": {name: median[name] / median["library (rows)"] for name in forms},
            "parts_ms_per_step": {p: median[p] / size[1] for p in PARTS},
        })  # fmt: skip
        print(size, {name: f"{median[name]:.2f} ms" for name in calls})
    _common.write_json(out / "results.json", {"note": _common.cpu_note(), "repeats": repeats, "rows": rows})
    table = _common.markdown_table(
        ["B, T, D, H, O", *(f"{name} ms" for name in forms), "columns / library", "columns-pairs / library"],
        [[f"{r['B']}, {r['T']}, {r['D']}, {r['H']}, {r['O']}", *(f"{r['median_ms'][n]:.2f}" for n in forms),
          f"{r['over_library']['columns']:.2f}x", f"{r['over_library']['columns-pairs']:.2f}x"] for r in rows],
    )  # fmt: skip
    parts = _common.markdown_table(
        ["B, T, D, H, O", *(f"{p} (ms a step)" for p in PARTS)],
        [[f"{r['B']}, {r['T']}, {r['D']}, {r['H']}, {r['O']}", *(f"{r['parts_ms_per_step'][p]:.3f}" for p in PARTS)]
         for r in rows],
    )  # fmt: skip
    (out / "summary.md").write_text(
        f"# The Elman reverse scan: errors as rows or as columns{' (quick)' if args.quick else ''}\n\n"
        f"{_common.cpu_note()}; {repeats} interleaved repeats; medians of the reverse scan alone\n\n{table}\n\n"
        f"The library's step cut short (cumulative):\n\n{parts}\n"
    )
    print(table)
    print(parts)


if __name__ == "__main__":
    _common.run(main)
