"""Where the hand-derived backward pass sums its weight gradients on a CPU: inside the reverse scan, or after it.

Question. The Elman and LSTM custom VJPs (`rnn_jax.bptt`) can sum dW = sum_t z_t^T delta_t inside their reverse
scans, one [D + H, B] @ [B, G H] product per step, or form it after the scan as one [D + H, T B] @ [T B, G H]
product. On a CPU `rnn_jax.bptt` sums after the scan below `bptt.CPU_SUM_IN_SCAN_MIN_BATCH` batch rows on one
device (`CPU_SUM_IN_SCAN_MIN_BATCH_SPLIT` rows per device in a step split over several) and inside from there up.
Does each side of those thresholds pay, per cell, on one device and on two? Both forms run as `rnn_jax.bench`
implementations of the fast path (the thresholds forced to 0 or to infinity while each compiles), in one process
with interleaved repeats, beside flax and (when importable) PyTorch; the harness checks that all agree on the first
step's loss and gradients.

Command:
  python -m experiments.weight_sums            # 5 Elman and 4 LSTM sizes, 1 and 2 devices, 11 repeats
  python -m experiments.weight_sums --quick    # 1 small size per cell, 3 repeats

Expected runtime on 2 CPU cores: about 3 minutes (--quick: about 1 minute).
Expected result (2-core AMD EPYC Zen 3, 2026-11-28): the train step with the sums after the scan in 0.5-0.97x the
time of the sums inside below 64 rows per device (a tie at 32 rows on each of two devices), and 1.0-1.2x at 64. On
the 2-core Intel Xeon (2026-11-29, 2 minutes 25 s; results/weight_sums/xeon/) the same on one device (0.67-0.98x
below 64 rows, 1.03x at 64) but 1.11-1.15x with 32 rows on each of two devices, hence the split threshold of 32.
Writes results.json (the harness's JSON records and agreement, and the after / inside ratios) and summary.md (the
ratios per size and device count, and the harness's table).
"""

from __future__ import annotations

from experiments import _common
from rnn_jax import bench, bptt

DEVICES = 2  # the CPU is presented as this many devices (one per core on the 2-core machines)
# (B, T, D, H, O): rows per device from 1 to 64 on one device, half that on two (the LSTM's fast path takes
# autodiff at B = 1: no custom VJP to compare there)
BATCHED = [(8, 500, 8, 64, 8), (32, 100, 8, 64, 8), (32, 256, 32, 128, 32), (64, 256, 32, 128, 32)]
SIZES = {"elman": [(1, 1000, 1, 32, 1), *BATCHED], "lstm": BATCHED}
QUICK_SIZES = {"elman": [(8, 50, 4, 16, 4)], "lstm": [(8, 50, 4, 16, 4)]}
FORMS = {"after": 10**9, "inside": 0}  # form -> the threshold that forces it


def implementations(devices: int) -> list[bench.Implementation]:
    fast = [bench.named_implementations(["rnn-jax-fast"])[0]]
    if devices > 1:
        fast.append(bench.fast_on_devices(devices))
    names = ("CPU_SUM_IN_SCAN_MIN_BATCH", "CPU_SUM_IN_SCAN_MIN_BATCH_SPLIT")  # one device; a split step
    forms = [_common.forced(impl, form, bptt, dict.fromkeys(names, FORMS[form])) for impl in fast for form in FORMS]
    return forms + bench.named_implementations(["flax", "torch"])


def ratios(records: list[dict]) -> list[dict]:
    """after / inside train-step medians for each size and device count (the forms' records only)."""
    median = {
        (r["config"]["cell"], *(r["config"][k] for k in "BTDHO"), r["devices"], r["impl"].rsplit("-", 1)[-1]):
            r["median_ms"]
        for r in records
        if r["mode"] == "train" and r["impl"].endswith(tuple(FORMS))
    }  # fmt: skip
    rows = []
    for (cell, *size, devices, form), after in median.items():
        if form != "after":
            continue
        inside = median[(cell, *size, devices, "inside")]
        rows.append({"cell": cell, "B": size[0], "T": size[1], "D": size[2], "H": size[3], "O": size[4],
                     "devices": devices, "rows_per_device": size[0] // devices, "after_ms": after,
                     "inside_ms": inside, "after_over_inside": after / inside})  # fmt: skip
    return rows


def main() -> None:
    args = _common.parse_args("weight_sums", __doc__)
    out = _common.prepare(args.out)
    sizes, repeats = (QUICK_SIZES, 3) if args.quick else (SIZES, 11)
    shapes = [bench.Shape(cell, *size) for cell, cell_sizes in sizes.items() for size in cell_sizes]
    result, disagreements = _common.harness_on_cpu_devices("weight_sums", shapes, repeats, implementations, DEVICES)
    rows = ratios(result.records)
    _common.write_json(out / "results.json", {
        "notes": result.notes, "repeats": repeats, "threshold": bptt.CPU_SUM_IN_SCAN_MIN_BATCH,
        "threshold_split": bptt.CPU_SUM_IN_SCAN_MIN_BATCH_SPLIT, "rows": rows,
        "records": result.records, "agreement": [a._asdict() | {"shape": a.shape._asdict()} for a in result.agreement],
    })  # fmt: skip
    table = _common.markdown_table(
        ["cell", "B, T, D, H, O", "devices", "rows per device", "after / inside (ms)", "ratio"],
        [[r["cell"], f"{r['B']}, {r['T']}, {r['D']}, {r['H']}, {r['O']}", r["devices"], r["rows_per_device"],
          f"{r['after_ms']:.3f} / {r['inside_ms']:.3f}", f"{r['after_over_inside']:.2f}x"] for r in rows],
    )  # fmt: skip
    notes = "{backend} ({device}), {cpu_count} CPUs, jax {jax}, torch {torch}".format(**result.notes)
    summary = (
        f"# Weight gradients after vs inside the reverse scan{' (quick)' if args.quick else ''}\n\n{notes}; "
        f"{repeats} interleaved repeats; train step medians; the thresholds in use: "
        f"{bptt.CPU_SUM_IN_SCAN_MIN_BATCH} rows on one device, {bptt.CPU_SUM_IN_SCAN_MIN_BATCH_SPLIT} rows per "
        f"device in a split step\n\n{table}\n\n" + _common.harness_tail(result, disagreements)
    )
    (out / "summary.md").write_text(summary)
    _common.harness_verdict(
        "weight_sums", table, disagreements, "after / inside", [r["after_over_inside"] for r in rows]
    )


if __name__ == "__main__":
    _common.run(main)
