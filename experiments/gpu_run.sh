#!/usr/bin/env bash
# One GPU session's checks, in one call and under ten minutes: the environment, the `gpu` bench preset (Elman),
# the gated cells at two sizes, and the unroll/BPTT/cell tests on the GPU. Run from the repository root on a
# machine whose python3 has jax with CUDA, flax, optax, chex and (optionally) torch with CUDA:
#
#     OUT=/some/dir bash experiments/gpu_run.sh
#     OUT=/tmp/dry PYTHON=.venv/bin/python PRESET=quick bash experiments/gpu_run.sh   # a dry run on a CPU
#
# Every stage has its own time limit and a failing stage does not stop the next; the bench runs one
# configuration per process, writing one JSON file each into a scratch folder, merged into $OUT/bench-gpu.json
# and $OUT/bench-gated.json at the end, so a stage cut short keeps the configurations it finished.
set -u
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
PRESET=${PRESET:-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
SCRATCH=$(mktemp -d)
left() { local s=$(($1 - SECONDS)); echo $((s > 1 ? s : 1)); }  # seconds until the deadline $1

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    $PY -c "import sys, jax, flax, optax; print(sys.version.split()[0], 'jax', jax.__version__, jax.devices(),
             'flax', flax.__version__, 'optax', optax.__version__)"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    echo "cpus $(nproc)"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# the preset (Elman), one configuration per process
configs=$($PY -c "from rnn_jax.bench import PRESETS; print(*(','.join(map(str, c)) for c in PRESETS['$PRESET']))")
stop=$((SECONDS + 330))
i=0
for c in $configs; do
    i=$((i + 1))
    timeout "$(left $stop)" $PY -m rnn_jax bench --config "$c" --repeats 15 --json "$SCRATCH/elman-$i.json"
done 2>&1 | tee "$OUT/bench-gpu.log"

# the gated cells at the mid size and a large one
gated=(--config 64,256,32,128,32 --config 256,512,128,512,128)
[ "$PRESET" = gpu ] || gated=(--config 4,8,2,8,2)
stop=$((SECONDS + 100))
for cell in lstm gru; do
    timeout "$(left $stop)" $PY -m rnn_jax bench --cell $cell "${gated[@]}" --repeats 9 \
        --json "$SCRATCH/gated-$cell.json"
done 2>&1 | tee "$OUT/bench-gated.log"

# the invariants on the GPU: fast path = autodiff, hand BPTT = jax.grad, cells = their Python-loop oracle
workers=()
$PY -c "import xdist" 2>/dev/null && workers=(-n 4)  # pytest-xdist, where installed: compilation dominates
# (-p no:benchmark: pytest-benchmark, where installed, warns under xdist, and our warnings are errors)
timeout 110 $PY -m pytest -q -x -m "not slow" -p no:cacheprovider -p no:benchmark "${workers[@]}" tests/test_unroll.py \
    tests/test_bptt.py tests/test_cells.py 2>&1 | tail -n 40 | tee "$OUT/tests.log"

$PY - "$SCRATCH" "$OUT" <<'EOF'
import glob, json, os, sys

scratch, out = sys.argv[1:]
for prefix, name in (("elman-", "bench-gpu.json"), ("gated-", "bench-gated.json")):
    records = []
    for path in sorted(glob.glob(os.path.join(scratch, prefix + "*.json"))):
        with open(path) as f:
            records += json.load(f)
    with open(os.path.join(out, name), "w") as f:
        json.dump(records, f, indent=2)
    print(f"{name}: {len(records)} records")
EOF
