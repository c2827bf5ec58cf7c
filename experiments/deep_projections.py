"""Whether a deep network's layers should hoist their input products out of the scan, per backend.

Question. `rnn_jax.deep.apply(..., projections="hoisted")` computes each direction's x_t W_x for all T steps as
one [T B, width] @ [width, G H] product before its scan; "in_step" computes it inside every step. For the
single-layer unroll the harness measured hoisting faster on one H200 GPU (train steps 1.04-1.7x) and slower on a
2-core CPU, so `projections="auto"` hoists there on GPU/TPU only; a deep network's "auto" keeps the products in the
step on a CPU and hoists on GPU/TPU, as this study found on one H200. It times the compiled value and gradient of
the mean squared error of 2-layer networks (Elman and LSTM, one and two directions) both ways, in one process with
interleaved repeats, and checks that both give the same loss and gradients (relative 1e-4 in float32; the products
in full float32 precision, as in the harness; at an H200's default precision, which may use TensorFloat-32, 6 of
8 rows disagreed).

Command:
  python -m experiments.deep_projections            # 2 cells x 2 directions x 2 sizes, 9 repeats
  python -m experiments.deep_projections --quick    # one small size, 3 repeats

Expected runtime: --quick about 30 seconds on 2 CPU cores; the full run was not timed (the sizes are meant for a
GPU: about 60 s on one H200 at the default precision, more than 130 s in full float32; gpu_run.sh gives it 180 s).
Expected result: on one H200 (2026-11-29) hoisted / in step 0.80-0.91x at the GPU's default precision and
0.79-0.88x in full float32 (the 5 rows that run finished); on a CPU the single-layer measurements favour the
products in the step, and the --quick sizes are too small to say more. Writes results.json (per case: both medians and
percentiles, hoisted / in step, the agreement) and summary.md (the table).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments import _common
from rnn_jax import bench, deep

# (B, T, D, H, O): the harness's mid size and a long one with a wide state
SIZES = [(64, 256, 32, 128, 32), (128, 512, 64, 256, 64)]
QUICK_SIZES = [(8, 50, 4, 16, 4)]
CASES = [(cell, bidirectional) for cell in ("elman", "lstm") for bidirectional in (False, True)]
FORMS = ("in_step", "hoisted")


def _value_and_grad(cell: str, size: tuple[int, ...], bidirectional: bool):
    """The compiled value and gradient of each form, and their arguments (float32, 2 layers)."""
    b, t, d, h, o = size
    k_params, k_x, k_y = jax.random.split(jax.random.key(0), 3)
    params = deep.init(k_params, cell, d, h, o, layers=2, bidirectional=bidirectional)
    xs = jax.random.normal(k_x, (t, b, d))
    targets = jax.random.normal(k_y, (t, b, o))

    def loss(p, projections):
        outputs = deep.apply(p, xs, cell=cell, projections=projections).outputs
        return jnp.mean(jnp.square(outputs - targets))

    with jax.default_matmul_precision(bench.MATMUL_PRECISION):  # float32 products, no TensorFloat-32 on a GPU
        compiled = {
            form: jax.jit(jax.value_and_grad(lambda p, form=form: loss(p, form))).lower(params).compile()
            for form in FORMS
        }
    return compiled, params


def measure(cell: str, size: tuple[int, ...], bidirectional: bool, repeats: int) -> dict:
    compiled, params = _value_and_grad(cell, size, bidirectional)
    forms = _common.compare_forms(compiled, params, repeats)
    return {"cell": cell, "bidirectional": bidirectional, **dict(zip("BTDHO", size, strict=True)), **forms}


def main() -> None:
    args = _common.parse_args("deep_projections", __doc__)
    out = _common.prepare(args.out)
    sizes, repeats = (QUICK_SIZES, 3) if args.quick else (SIZES, 9)
    rows = []
    for size in sizes:
        for cell, bidirectional in CASES:
            rows.append(measure(cell, size, bidirectional, repeats))
            print(f"{cell} bidirectional={bidirectional} {size}: hoisted / in step "
                  f"{rows[-1]['hoisted_over_in_step']:.2f}x", flush=True)  # fmt: skip
    _common.report_forms(
        out,
        "deep_projections",
        f"Deep networks: input products hoisted or in the step{' (quick)' if args.quick else ''}",
        f"2 layers, float32, value and gradient of the MSE; medians of {repeats} interleaved repeats",
        rows,
        {"cell": lambda r: r["cell"], "directions": lambda r: 2 if r["bidirectional"] else 1},
    )


if __name__ == "__main__":
    _common.run(main)
