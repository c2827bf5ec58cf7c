"""Whether a deep network's layers should hoist their input products out of the scan, per backend.

Question. `rnn_jax.deep.apply(..., projections="hoisted")` computes each direction's x_t W_x for all T steps as
one [T B, width] @ [width, G H] product before its scan; "in_step" computes it inside every step. For the
single-layer unroll the harness measured hoisting faster on one H200 GPU (train steps 1.04-1.7x) and slower on a
2-core CPU, so `projections="auto"` hoists there on GPU/TPU only; a deep network's "auto" keeps the products in the
step everywhere until this study has been run on a GPU. It times the compiled value and gradient of the mean
squared error of 2-layer networks (Elman and LSTM, one and two directions) both ways, in one process with
interleaved repeats, and checks that both give the same loss and gradients (relative 1e-4 in float32).

Command:
  python -m experiments.deep_projections            # 2 cells x 2 directions x 2 sizes, 9 repeats
  python -m experiments.deep_projections --quick    # one small size, 3 repeats

Expected runtime: --quick about 30 seconds on 2 CPU cores; the full run was not timed (the sizes are meant for a
GPU, where an estimated minute covers it; gpu_run.sh gives it 120 s). Expected result: not yet measured on a GPU,
where the choice is open (the single-layer measurements favour hoisting there); on a CPU they favour the products
in the step, and the --quick sizes are too small to say more. Writes results.json (per case: both medians and
percentiles, hoisted / in step, the agreement) and summary.md (the table).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

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

    compiled = {
        form: jax.jit(jax.value_and_grad(lambda p, form=form: loss(p, form))).lower(params).compile() for form in FORMS
    }
    return compiled, params


def measure(cell: str, size: tuple[int, ...], bidirectional: bool, repeats: int) -> dict:
    compiled, params = _value_and_grad(cell, size, bidirectional)
    first = {form: jax.device_get(step(params)) for form, step in compiled.items()}
    agrees = all(
        np.allclose(a, b, rtol=1e-4, atol=1e-4 * max(float(np.max(np.abs(b))), 1e-6))
        for a, b in zip(jax.tree.leaves(first["hoisted"]), jax.tree.leaves(first["in_step"]), strict=True)
    )
    samples = {form: [] for form in FORMS}
    for _ in range(repeats):  # interleaved: in_step, hoisted, in_step, hoisted, ...
        for form, step in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(step(params))
            samples[form].append(time.perf_counter() - start)
    times = {form: bench.percentiles(s) for form, s in samples.items()}
    b, t, d, h, o = size
    return {
        "cell": cell, "bidirectional": bidirectional, "B": b, "T": t, "D": d, "H": h, "O": o,
        **{f"{form}_ms": times[form][0] for form in FORMS},
        **{f"{form}_p10_p90_ms": times[form][1:] for form in FORMS},
        "hoisted_over_in_step": times["hoisted"][0] / times["in_step"][0], "agrees": agrees,
    }  # fmt: skip


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
    device = f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    _common.write_json(out / "results.json", {"device": device, "repeats": repeats, "rows": rows})
    table = _common.markdown_table(
        ["cell", "directions", "B, T, D, H, O", "in step ms", "hoisted ms", "hoisted / in step", "agree"],
        [[r["cell"], 2 if r["bidirectional"] else 1, f"{r['B']}, {r['T']}, {r['D']}, {r['H']}, {r['O']}",
          f"{r['in_step_ms']:.3f}", f"{r['hoisted_ms']:.3f}", f"{r['hoisted_over_in_step']:.2f}x", r["agrees"]]
         for r in rows],
    )  # fmt: skip
    (out / "summary.md").write_text(
        f"# Deep networks: input products hoisted or in the step{' (quick)' if args.quick else ''}\n\n"
        f"{device}, jax {jax.__version__}; 2 layers, float32, value and gradient of the MSE; medians of "
        f"{repeats} interleaved repeats\n\n{table}\n"
    )
    print(table)
    if not all(r["agrees"] for r in rows):
        raise SystemExit("deep_projections: hoisted and in step disagree on the loss or gradients")


if __name__ == "__main__":
    main()
