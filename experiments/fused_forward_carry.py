"""What made the Elman forward kernel at H = 128 slow: the activation, the warps, or what its loop carries?

Question. On one H200 the fused reverse kernel (`rnn_jax.fused.reverse_errors`) at B = 64, T = 256, H = 128 took
1.4 ms with 8 warps, the forward kernel 5.4-7.7 ms, though each runs one [16, H] @ [H, H] product per step. The
reverse kernel's loop carries what its product produced (c_{t-1} = delta_t W_s^T); the forward kernel carried the
state s_t and multiplied at the start of the next step. This study times, interleaved in one process, the forward
kernel in both forms: carrying s_{t-1} (the previous form, written out here on `fused.run_recursion`) with tanh,
the identity and tanh written through exp, and carrying s_{t-1} W_s (the library's form since), next to the
reverse kernel, and reports each one's largest difference from the library's forward states.

Command:
  python -m experiments.fused_forward_carry            # on a GPU, about 30 s (Triton compiles)
  python -m experiments.fused_forward_carry --quick --interpret   # anywhere, at B = 16, T = 4, H = 16 (a test of
                                                                  # the study, not a measurement)

Result (one H200, jax 0.11.2, 2026-11-28; experiments/results/fused_kernels/h200-forward-carry.txt): carrying the
product, 1.14 ms with 8 warps (16: 1.37; 4: 18.5); carrying the state, 5.2 ms with 4 warps and 7.5 with 8, the same
with the identity (7.3) or tanh through exp (7.3): the activation is not the cause, the loop's carry is. The
reverse kernel: 1.30 ms. Writes results.json and summary.md.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax as rj
from experiments import _common, fused_kernels
from rnn_jax import fused


def _tanh_by_exp(x):
    e = jnp.exp(-2.0 * jnp.abs(x))
    return jnp.sign(x) * (1.0 - e) / (1.0 + e)


def _carrying_the_state(activation, warps: int):
    """The previous forward kernel: s_t = phi(u_t + s_{t-1} W_s) with s_{t-1} as the loop's carry (no mask; B a
    multiple of `fused.ROWS` and H a power of two, so nothing is padded)."""
    phi = rj.activations.get(activation).fn

    def step(at_t, carry, matrices):
        (s_prev,), (w_s,) = carry, matrices
        product = jnp.dot(s_prev, w_s, precision=jax.lax.Precision.HIGHEST, preferred_element_type=s_prev.dtype)
        s = phi(at_t[0] + product)
        return (s,), (s,)

    def run(u, w_s, s_0):
        (states,), _ = fused.run_recursion(step, [u], [w_s], [s_0], 1, False, fused.KernelOptions(warps))
        return states

    return run


def _library_forward(warps: int):
    return lambda u, w_s, s_0: fused.recurrence(u, w_s, s_0, None, "tanh", fused.KernelOptions(warps))[0]


def _library_reverse(warps: int):
    return lambda *args: fused.reverse_errors(*args, options=fused.KernelOptions(warps))[1]


def measure(batch: int, steps: int, hidden: int, repeats: int) -> list[dict]:
    arguments = fused_kernels.recursion_arguments(batch, steps, hidden)
    forward_args, reverse_args = arguments["forward"], arguments["reverse"]
    variants = {
        **{f"forward, carries s W_s, {w} warps": (_library_forward(w), forward_args) for w in (4, 8, 16)},
        **{f"forward, carries s, tanh, {w} warps": (_carrying_the_state("tanh", w), forward_args) for w in (4, 8)},
        "forward, carries s, identity, 8 warps": (_carrying_the_state("identity", 8), forward_args),
        "forward, carries s, tanh through exp, 8 warps": (_carrying_the_state(_tanh_by_exp, 8), forward_args),
        "reverse, carries delta W_s^T, 8 warps": (_library_reverse(8), reverse_args),
    }
    compiled = {name: (jax.jit(fn).lower(*args).compile(), args) for name, (fn, args) in variants.items()}
    reference = np.asarray(compiled["forward, carries s W_s, 8 warps"][0](*forward_args))
    samples = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, (fn, args) in compiled.items():
            jax.block_until_ready(fn(*args))  # one untimed call per repeat, so each timed call finds a warm device
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            samples[name].append(time.perf_counter() - start)
    rows = []
    for name, times in samples.items():
        fn, args = compiled[name]
        difference = float(np.max(np.abs(np.asarray(fn(*args)) - reference))) if name.startswith("forward") else None
        rows.append({"B": batch, "T": steps, "H": hidden, "variant": name, **fused_kernels.timings(times),
                     "max_abs_difference_from_library_forward": difference})  # fmt: skip
    return rows


def main() -> None:
    args, out, device, mode = fused_kernels.parse_kernel_study_args("fused_forward_carry", __doc__)
    (batch, steps, hidden), repeats = ((16, 4, 16), 3) if args.quick else ((64, 256, 128), 15)
    rows = measure(batch, steps, hidden, repeats)
    _common.write_json(out / "results.json", {"device": device, "compiled": fused.compiled(), "rows": rows})
    table = _common.markdown_table(
        ["variant", "median ms (p10-p90)", "max abs diff from the library's forward"],
        [[r["variant"], f"{r['median_ms']:.3f} ({r['p10_ms']:.3f}-{r['p90_ms']:.3f})",
          "" if r["max_abs_difference_from_library_forward"] is None
          else f"{r['max_abs_difference_from_library_forward']:.1e}"] for r in rows],
    )  # fmt: skip
    title = "# The Elman forward kernel: what its loop carries"
    summary = f"{title}\n\nB = {batch}, T = {steps}, H = {hidden}, {device}; kernels {mode}\n\n{table}\n"
    (out / "summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    _common.run(main)
