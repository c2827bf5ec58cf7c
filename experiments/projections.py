"""Where the single-layer unroll should compute the products that do not depend on the state, per cell and batch.

Question. `rnn_jax.unroll.unroll(..., projections="hoisted")` computes x_t W_x for all T steps as one
[T B, D] @ [D, G H] product before the scan and the read-out as one [T B, H] @ [H, O] product after it (as cuDNN
does); "in_step" computes both inside every step; "hoisted_readout" keeps x_t W_x in the step and hoists only the
read-out (as flax's `nn.RNN` with a Dense read-out does). "auto" chooses by backend and, on a CPU, by cell, batch
and widths (`rnn_jax.unroll.resolve_projections`, `CPU_HOIST_MAX_BATCH`). This study times the three forms, in one
process with interleaved repeats, for the forward pass and for the autodiff train step's value and gradient (the
mean squared error), for the three cells over batch sizes from one sequence to the harness's mid size, and checks
that all forms give the same outputs, loss and gradients (relative 1e-4 in float32). Each sample runs a call as
often as it takes to fill 20 ms, so the single-sequence sizes are not timed at the clock's resolution.

Command:
  python -m experiments.projections            # 3 cells x 14 sizes x 2 modes x 3 forms, 9 repeats
  python -m experiments.projections --quick    # the Elman cell at two small sizes, 3 repeats

Expected runtime: about 3 minutes on the 2-core Intel Xeon (--quick about 10 seconds). Expected result, Elman
cell: hoisting both products is faster with at most 8 batch rows wherever D or O > 1 (Zen 3, 2026-11-28, forward
0.40-0.85x, train 0.64-0.91x) and mixed from 16 rows up (0.89-1.30x); at D = O = 1 hoisting both gains nothing
(Zen 3: 1.06x forward, 1.02x train at (1,1000,1,32,1)) or loses (Intel Xeon, 2026-11-29: 1.08x and 1.15x), while
hoisting only the read-out is the fastest form for one sequence with D = 1 (Intel Xeon, throwaway runs: forward
0.92-0.95x in step) and not for more rows; for the LSTM and GRU the hoisted forward pass is slower at most sizes
(up to 2-3x) though their train steps are often faster hoisted at a few rows. Writes results.json (per case: each
form's median and percentiles, each hoisted form over in step, the agreement, and which form "auto" takes there)
and summary.md (the table).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from experiments import _common
from rnn_jax import cells
from rnn_jax.unroll import resolve_projections, unroll

# (B, T, D, H, O): one sequence (D = O = 1 as in the harness, and wider), a few rows, and the harness's batched sizes
SIZES = [
    (1, 1000, 1, 32, 1), (1, 1000, 1, 64, 1), (1, 1000, 1, 32, 8), (1, 1000, 8, 32, 8), (1, 500, 32, 128, 32),
    (2, 1000, 8, 32, 8), (4, 500, 1, 32, 1), (4, 500, 32, 128, 32),
    (8, 256, 8, 32, 8), (8, 256, 32, 128, 32), (16, 256, 8, 64, 8), (16, 256, 32, 128, 32), (32, 100, 8, 64, 8),
    (64, 256, 32, 128, 32),
]  # fmt: skip
QUICK_SIZES = [(1, 100, 4, 16, 4), (16, 50, 4, 16, 4)]
CELLS = ("elman", "lstm", "gru")
MODES = ("forward", "train")
FORMS = ("in_step", "hoisted", "hoisted_readout")


def _compiled(cell_name: str, size: tuple[int, ...], mode: str):
    """Each form's compiled forward pass (the outputs) or value and gradient (of the MSE), and its argument."""
    b, t, d, h, o = size
    cell = cells.get(cell_name)
    k_params, k_x, k_y = jax.random.split(jax.random.key(0), 3)
    params = cell.init(k_params, d, h, o)
    xs = jax.random.normal(k_x, (t, b, d))
    targets = jax.random.normal(k_y, (t, b, o))

    def outputs(p, projections):
        return unroll(p, xs, cell=cell, projections=projections).outputs

    def loss(p, projections):
        return jnp.mean(jnp.square(outputs(p, projections) - targets))

    run = outputs if mode == "forward" else jax.value_and_grad(loss)
    compiled = {form: jax.jit(functools.partial(run, projections=form)).lower(params).compile() for form in FORMS}
    return compiled, params


def measure(cell_name: str, size: tuple[int, ...], mode: str, repeats: int) -> dict:
    compiled, params = _compiled(cell_name, size, mode)
    forms = _common.compare_forms(compiled, params, repeats, min_sample_s=0.02)
    auto = resolve_projections("auto", cell=cells.get(cell_name), batch=size[0], widths=(size[2], size[4]))
    return {"cell": cell_name, "mode": mode, **dict(zip("BTDHO", size, strict=True)), **forms, "auto": auto}


def main() -> None:
    args = _common.parse_args("projections", __doc__)
    out = _common.prepare(args.out)
    sizes, repeats, cell_names = (QUICK_SIZES, 3, ("elman",)) if args.quick else (SIZES, 9, CELLS)
    rows = []
    for cell_name in cell_names:
        for size in sizes:
            for mode in MODES:
                rows.append(measure(cell_name, size, mode, repeats))
                print(f"{cell_name} {mode} {size}: over in step, hoisted {rows[-1]['hoisted_over_in_step']:.2f}x, "
                      f"hoisted read-out {rows[-1]['hoisted_readout_over_in_step']:.2f}x (auto: {rows[-1]['auto']})",
                      flush=True)  # fmt: skip
    _common.report_forms(
        out,
        "projections",
        "The single-layer unroll: projections in the step, hoisted, or the read-out hoisted"
        + (" (quick)" if args.quick else ""),
        f"float32; forward: the outputs, train: the autodiff value and gradient of the MSE; medians of {repeats} "
        "interleaved repeats of at least 20 ms each",
        rows,
        {"cell": lambda r: r["cell"], "mode": lambda r: r["mode"], "auto": lambda r: r["auto"]},
        FORMS,
    )


if __name__ == "__main__":
    _common.run(main)
