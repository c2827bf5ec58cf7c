"""The fused recursions (`rnn_jax.fused`) against the `lax.scan` recursions they replace, and their kernel options.

Question. The Elman network's forward recursion s_t = phi(u_t + s_{t-1} W_s) and its reverse error recursion each
run as one Pallas kernel under ``backward="fused"``. On this device, how long does each kernel take against the
same recursion as a `lax.scan`, and which `rnn_jax.fused.KernelOptions` (Triton warps per program; W_s held in
registers for the whole loop or read at every step) is fastest? Every variant runs interleaved with the others in
one process; each one's output is compared with the scan's.

Command:
  python -m experiments.fused_kernels                # on a GPU: 3 sizes x 2 recursions x (scan + 6 kernel variants)
  python -m experiments.fused_kernels --quick        # 1 size, 2 kernel variants
  python -m experiments.fused_kernels --quick --interpret   # anywhere: the kernels in Pallas's interpreter (a
                                                            # test of the study, not a measurement)

Expected runtime on one GPU: about 1 minute, mostly Triton compiles (45 s on one H200; --quick: 20 s). Without a GPU
the study refuses to run unless --interpret is given. Expected result (one H200, 2026-11-27, README "Fused
recursions"): at H = 32 and 64 the best kernels 3-20x faster than the scan (0.25-0.85 ms), with 8 warps the better
default; at H = 128 the forward kernel slower than the scan (5.4 ms against 2.0) and the reverse one faster only
with 8 warps (1.4 ms; 18 ms with 4). The forward kernel has since changed what its loop carries, which made it 6.6x
faster at H = 128 (`experiments.fused_forward_carry`); this study has not been rerun on a GPU since. Writes
results.json and summary.md.
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp

import rnn_jax as rj
from experiments import _common
from rnn_jax import bench, fused

SIZES = [(64, 256, 128), (1, 1000, 32), (32, 100, 64)]  # (B, T, H): where cuDNN beat the scan on an H200
QUICK_SIZES = [(4, 20, 16)]
VARIANTS = [fused.KernelOptions(w, once) for w in (2, 4, 8) for once in (True, False)]
QUICK_VARIANTS = [fused.KernelOptions(4, True), fused.KernelOptions(4, False)]


def _name(options: fused.KernelOptions) -> str:
    return f"{options.num_warps}warps-{'once' if options.weights_once else 'per-step'}"


def _scan_forward(u, w_s, s0):
    def step(s, u_t):
        s = jnp.tanh(u_t + s @ w_s)
        return s, s

    return jax.lax.scan(step, s0, u)[1]


def _scan_reverse(params, direct, dphi, mask, final_error):
    def step(c, inputs):
        direct_t, dphi_t = inputs
        delta = (direct_t + c) * dphi_t
        return delta @ params.w_s.T, delta

    return jax.lax.scan(step, final_error, (direct, dphi), reverse=True)[1]


def recursion_arguments(batch: int, steps: int, hidden: int) -> dict[str, tuple]:
    """The arguments of the forward recursion, (u [T, B, H], W_s, s_0), and of the reverse one, (params, direct
    errors, phi', no mask, final error), under "forward" and "reverse": random, the same for every variant."""
    keys = jax.random.split(jax.random.key(0), 4)
    params = rj.elman.init(keys[0], 1, hidden, 1)
    u = jax.random.normal(keys[1], (steps, batch, hidden))
    s0 = jnp.zeros((batch, hidden))
    direct = 1e-2 * jax.random.normal(keys[2], (steps, batch, hidden))
    dphi = jax.random.uniform(keys[3], (steps, batch, hidden))
    return {"forward": (u, params.w_s, s0), "reverse": (params, direct, dphi, None, s0)}


def _compiled(batch: int, steps: int, hidden: int, variants) -> tuple[dict, dict, dict]:
    """{(recursion, variant): compiled function}, their arguments, and {(recursion, variant): error} for the
    variants that did not compile, for one size."""
    args = recursion_arguments(batch, steps, hidden)
    fns = {("forward", "scan"): _scan_forward, ("reverse", "scan"): _scan_reverse}
    for options in variants:
        fns["forward", _name(options)] = lambda u, w, s, o=options: fused.recurrence(u, w, s, None, "tanh", o)[0]
        fns["reverse", _name(options)] = lambda *a, o=options: fused.reverse_errors(*a, options=o)[1]
    compiled, failed = {}, {}
    for key, fn in fns.items():
        try:
            # the harness's full float32 products for the scans (a GPU's default would round their inputs to TF32),
            # as the kernels' own
            with jax.default_matmul_precision(bench.MATMUL_PRECISION):
                compiled[key] = jax.jit(fn).lower(*args[key[0]]).compile()
        except Exception as error:  # a variant Triton rejects (registers, shared memory) is a result, not the end
            failed[key] = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
    return compiled, args, failed


def measure(batch: int, steps: int, hidden: int, variants, repeats: int) -> list[dict]:
    compiled, args, failed = _compiled(batch, steps, hidden, variants)
    outputs = {key: jax.block_until_ready(fn(*args[key[0]])) for key, fn in compiled.items()}
    samples = {key: [] for key in compiled}
    for _ in range(repeats):
        for key, fn in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args[key[0]]))
            samples[key].append(time.perf_counter() - start)
    rows = []
    for (recursion, variant), times in samples.items():
        diff = float(jnp.max(jnp.abs(outputs[recursion, variant] - outputs[recursion, "scan"])))
        rows.append({"B": batch, "T": steps, "H": hidden, "recursion": recursion, "variant": variant,
                     **timings(times), "max_abs_difference_from_scan": diff})  # fmt: skip
    for (recursion, variant), error in failed.items():
        rows.append({"B": batch, "T": steps, "H": hidden, "recursion": recursion, "variant": variant, "error": error})
    return rows


def timings(seconds) -> dict:
    """A variant's median and 10th-90th percentiles, in ms, of its timing samples in seconds (`bench.percentiles`)."""
    return dict(zip(("median_ms", "p10_ms", "p90_ms"), bench.percentiles(seconds), strict=True))


def parse_kernel_study_args(name: str, doc: str | None):
    """A kernel study's options (`--quick`, `--out`, `--interpret`), its output folder, its device and whether its
    kernels run compiled; without a GPU the study stops unless told to interpret them."""
    args = _common.parse_args(
        name, doc, flags={"--interpret": "without a GPU: run the kernels in Pallas's interpreter (ignored on a GPU)"}
    )
    if not fused.compiled() and not args.interpret:
        print(
            f"{name}: the kernels compile on a GPU only (backend here: {jax.default_backend()}); "
            "add --interpret to run the study in Pallas's interpreter (slow, and not a measurement)",
            file=sys.stderr,
        )
        raise SystemExit(2)  # a usage error, as argparse's
    device = f"{jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}"
    mode = "interpreted (not a measurement)" if not fused.compiled() else "compiled"
    return args, _common.prepare(args.out), device, mode


def main() -> None:
    args, out, device, mode = parse_kernel_study_args("fused_kernels", __doc__)
    sizes, variants, repeats = (QUICK_SIZES, QUICK_VARIANTS, 5) if args.quick else (SIZES, VARIANTS, 20)
    rows = []
    for batch, steps, hidden in sizes:
        start = time.perf_counter()
        size_rows = measure(batch, steps, hidden, variants, repeats)
        rows += size_rows
        for recursion in ("forward", "reverse"):
            mine = {r["variant"]: r["median_ms"] for r in size_rows if r["recursion"] == recursion and "error" not in r}
            kernels = [v for v in mine if v != "scan"]
            best = (
                f"best kernel {min(kernels, key=mine.get)} {min(mine[v] for v in kernels):.3f} ms"
                if kernels
                else ("no kernel compiled")
            )
            print(f"B={batch} T={steps} H={hidden} {recursion}: scan {mine['scan']:.3f} ms, {best} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
        # after every size, so that a run stopped by a time limit keeps what it measured
        _common.write_json(out / "results.json", {"device": device, "kernels": mode, "repeats": repeats, "rows": rows})
    table = _common.markdown_table(
        ["B, T, H", "recursion", "variant", "median ms (p10-p90)", "scan / this", "max abs diff from scan"],
        [[f"{r['B']}, {r['T']}, {r['H']}", r["recursion"], r["variant"], *_cells(rows, r)] for r in rows],
    )
    (out / "summary.md").write_text(f"# The fused recursions against the scan\n\n{device}; kernels {mode}\n\n{table}\n")
    print(table)


def _cells(rows: list[dict], r: dict) -> list[str]:
    """The timing columns of the summary table for row ``r`` (its error instead, where it did not compile)."""
    if "error" in r:
        return [f"failed to compile: {r['error']}", "", ""]
    return [f"{r['median_ms']:.3f} ({r['p10_ms']:.3f}-{r['p90_ms']:.3f})", f"{_scan_ms(rows, r) / r['median_ms']:.2f}x",
            f"{r['max_abs_difference_from_scan']:.1e}"]  # fmt: skip


def _scan_ms(rows: list[dict], row: dict) -> float:
    """The scan's median for ``row``'s size and recursion."""

    def key(r):
        return r["B"], r["T"], r["H"], r["recursion"]

    return next(r["median_ms"] for r in rows if r["variant"] == "scan" and key(r) == key(row))


if __name__ == "__main__":
    _common.run(main)
