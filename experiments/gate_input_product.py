"""A single input (D = 1): the gated cells' input product per gate, against one product, on this machine.

Question. For a time series (one input per step), a gated cell's x_t W_x is a [B, 1] @ [1, G H] product. On a CPU,
`rnn_jax.cells._common.gate_input_product` computes it as one [B, 1] @ [1, H] product per gate (the same
multiplications) in a forward pass, and as the single product under differentiation. How much faster is the
per-gate form than the single product, for the forward pass and for a train step's value and gradient
(``backward="fast"``), for the GRU and the LSTM? Both forms run interleaved in one process; the gradients are
checked equal.

Command:
  python -m experiments.gate_input_product            # 5 sizes x 2 cells, 15 interleaved repeats
  python -m experiments.gate_input_product --quick    # 2 sizes, 7 repeats

Expected runtime on 2 CPU cores: about 1 minute (--quick: 15 seconds).
Expected result: the per-gate forward pass in about 0.4-0.6x the single product's time (the LSTM's at B = 1 keeps
the single product: per gate it was slower there), the train step unchanged for the GRU (autodiff: the same
single product) and 0.8-0.9x for the LSTM at B > 1 (its hand-derived backward pass differentiates the per-gate
forward pass). Writes results.json and summary.md.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import rnn_jax as rj
from experiments import _common
from rnn_jax import cells

SIZES = [(1, 1000, 32), (8, 1000, 32), (32, 200, 64), (64, 256, 128), (1, 1000, 64)]  # (B, T, H), D = O = 1
QUICK_SIZES = [(1, 1000, 32), (64, 256, 128)]
PER_GATE = cells._common.gate_input_product


def _single_product(x, w_x, gates, *, per_gate):
    return x @ w_x


def _compiled(cell, batch, steps, hidden, input_product):
    """The jitted forward pass and value-and-gradient of a mean squared error, with ``input_product`` in place."""
    cells._common.gate_input_product = input_product
    try:
        params = cell.init(jax.random.key(0), 1, hidden, 1)
        xs = jax.random.normal(jax.random.key(1), (steps, batch, 1))
        targets = jax.random.normal(jax.random.key(2), (steps, batch, 1))

        def forward(p, x):
            return rj.unroll(p, x, cell=cell, backward="fast").outputs

        def loss(p, x):
            return jnp.mean(jnp.square(forward(p, x) - targets))

        compiled = {
            "forward": jax.jit(forward).lower(params, xs).compile(),
            "train": jax.jit(jax.value_and_grad(loss)).lower(params, xs).compile(),
        }
    finally:
        cells._common.gate_input_product = PER_GATE
    return compiled, (params, xs)


def measure(cell_name: str, batch: int, steps: int, hidden: int, repeats: int) -> dict:
    """Median ms of each form and mode, interleaved, and the largest gradient difference between the forms."""
    cell = cells.get(cell_name)
    forms = {"per_gate": PER_GATE, "single": _single_product}
    compiled = {name: _compiled(cell, batch, steps, hidden, form) for name, form in forms.items()}
    for fns, args in compiled.values():
        for f in fns.values():
            jax.block_until_ready(f(*args))
    times = {(form, mode): [] for form in forms for mode in ("forward", "train")}
    for _ in range(repeats):
        for (form, mode), samples in times.items():
            fns, args = compiled[form]
            start = time.perf_counter()
            jax.block_until_ready(fns[mode](*args))
            samples.append(time.perf_counter() - start)
    grads = [compiled[form][0]["train"](*compiled[form][1])[1] for form in forms]
    grad_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(*map(jax.tree.leaves, grads), strict=True))
    medians = {f"{form}_{mode}_ms": 1e3 * float(np.median(s)) for (form, mode), s in times.items()}
    return {"cell": cell_name, "B": batch, "T": steps, "D": 1, "H": hidden, "O": 1, **medians,
            "max_grad_difference": grad_diff}  # fmt: skip


def main() -> None:
    args = _common.parse_args("gate_input_product", __doc__)
    out = _common.prepare(args.out)
    sizes, repeats = (QUICK_SIZES, 7) if args.quick else (SIZES, 15)
    rows = []
    for cell_name in ("gru", "lstm"):
        for batch, steps, hidden in sizes:
            row = measure(cell_name, batch, steps, hidden, repeats)
            rows.append(row)
            print(
                f"{cell_name} B={batch} T={steps} H={hidden}: forward {row['per_gate_forward_ms']:.3f} vs "
                f"{row['single_forward_ms']:.3f} ms, train {row['per_gate_train_ms']:.3f} vs "
                f"{row['single_train_ms']:.3f} ms (per gate vs single)",
                flush=True,
            )
    device = f"{jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}"
    _common.write_json(out / "results.json", {"device": device, "repeats": repeats, "rows": rows})
    table = _common.markdown_table(
        ["cell", "B, T, H (D = O = 1)", "forward per gate / single (ms)", "ratio", "train per gate / single (ms)",
         "ratio", "max grad diff"],
        [[r["cell"], f"{r['B']}, {r['T']}, {r['H']}",
          f"{r['per_gate_forward_ms']:.3f} / {r['single_forward_ms']:.3f}",
          f"{r['per_gate_forward_ms'] / r['single_forward_ms']:.2f}x",
          f"{r['per_gate_train_ms']:.3f} / {r['single_train_ms']:.3f}",
          f"{r['per_gate_train_ms'] / r['single_train_ms']:.2f}x", f"{r['max_grad_difference']:.1e}"]
         for r in rows],
    )  # fmt: skip
    (out / "summary.md").write_text(f"# The gated cells' input product at D = 1\n\n{device}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    _common.run(main)
