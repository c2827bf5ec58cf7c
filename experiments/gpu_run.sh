#!/usr/bin/env bash
# One GPU session's checks in one call of at most about 9 minutes (stage limits 300 + 2 x 75 + 100 s): the
# environment, the `gpu` bench preset (Elman), the gated cells at two sizes, and the unroll/BPTT/cell tests on the
# GPU. Run from the repository root on a machine whose python3 has jax with CUDA, flax, optax, chex and
# (optionally) torch with CUDA:
#
#     OUT=/some/dir bash experiments/gpu_run.sh
#     OUT=/tmp/dry PYTHON=.venv/bin/python PRESET=quick bash experiments/gpu_run.sh   # a dry run on a CPU
#
# Every stage has its own time limit and a failing stage does not stop the next. `rnn-jax bench --json` rewrites
# its JSON after every finished size, so a stage cut short keeps the sizes it finished (the table is printed at
# the end only; the log has a progress line per size).
set -u
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
PRESET=${PRESET:-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    $PY -c "import sys, jax, flax, optax; print(sys.version.split()[0], 'jax', jax.__version__, jax.devices(),
             'flax', flax.__version__, 'optax', optax.__version__)"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    echo "cpus $(nproc)"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# the preset (Elman), in one process
timeout 300 $PY -m rnn_jax bench --preset "$PRESET" --json "$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.log"

# the gated cells at the mid size and a large one
gated=(--config 64,256,32,128,32 --config 256,512,128,512,128)
[ "$PRESET" = gpu ] || gated=(--config 4,8,2,8,2)
for cell in lstm gru; do
    timeout 75 $PY -m rnn_jax bench --cell $cell "${gated[@]}" --repeats 9 --json "$OUT/bench-$cell.json"
done 2>&1 | tee "$OUT/bench-gated.log"

# the invariants on the GPU: fast path = autodiff, hand BPTT = jax.grad, cells = their Python-loop oracle
# (-p no:benchmark: pytest-benchmark, where installed, warns under xdist, and our warnings are errors)
workers=()
$PY -c "import xdist" 2>/dev/null && workers=(-n 4)
timeout 100 $PY -m pytest -q -x -m "not slow" -p no:cacheprovider -p no:benchmark "${workers[@]}" tests/test_unroll.py \
    tests/test_bptt.py tests/test_cells.py 2>&1 | tail -n 40 | tee "$OUT/tests.log"
