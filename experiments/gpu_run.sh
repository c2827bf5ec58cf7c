#!/usr/bin/env bash
# One GPU session's checks in one call of at most 10 minutes: the environment, then by default the fused Pallas
# kernels (their tests compiled by Triton, the kernel study, the harness); a second call can run STAGES=tests.
# Run from the repository root on a machine whose python3 has jax with CUDA, flax, optax, chex and (optionally)
# torch with CUDA:
#
#     OUT=/some/dir bash experiments/gpu_run.sh
#     OUT=/tmp/dry PYTHON=.venv/bin/python PRESET=quick bash experiments/gpu_run.sh   # a dry run on a CPU
#     OUT=/some/dir STAGES="preset gated" bash experiments/gpu_run.sh                  # other stages
#
# STAGES (default "fused") picks the stages after the environment: "fused" (the Pallas kernels of rnn_jax.fused
# compiled by Triton for the first time: their default-stage tests, 140 s; `experiments.fused_kernels`, the Elman
# kernels against the scan and their options, 100 s; the harness against the fast path and cuDNN at the Elman
# sizes with H <= 128, 160 s, and the LSTM sizes with H <= 64, 140 s: 540 s in all, so give the call ~590 s),
# "fused-gru" (the GRU's fused kernels in the harness, 140 s), "warps" (the LSTM's and the GRU's kernels with 8
# warps, the default, against 4, 100 s),
# "h128" (the Elman forward kernel's carry at H = 128: its study and the train step, 90 s on one H200, 2026-11-29:
# the fused train step 1.74-1.80x faster, so backward="fast" now takes it there), "graphs" (the scan's loop as CUDA
# graphs, XLA's command buffers, where cuDNN is ahead, 130 s; measured slower, not adopted), "deep"
# (`experiments.deep_projections`: a deep network's input products hoisted or in the step, 60 s at the default
# precision, over 130 s in full float32, which it now uses; hoisting won, so a deep network's "auto" hoists on a GPU),
# "preset" (the Elman `gpu` preset with the default implementations, 330 s; 294 s on one H200), "gated" (the LSTM's and the GRU's hand-written backward passes
# against autodiff and torch at the standard sizes, or $PRESET's when it is not "gpu", 300 s: never measured on a
# GPU yet) and "tests" (200 s; 104 s on one H200 with 8 workers). "fused" alone fills most of one 600-second call
# ("fused-gru tests" a second one); two of the others fit one; "gated-carry" (the LSTM's and GRU's forward kernels
# carrying their products, against the default, 150 s). Next to run: "deep preset" (the deep forms' agreement in full
# float32, and the defaults with the Elman kernels at H = 128), then "gated-carry tests", then "gated".
#
# Every stage has its own time limit and a failing stage does not stop the next. `rnn-jax bench --json` rewrites
# its JSON after every finished size, so a stage cut short keeps the sizes it finished (the table is printed at
# the end only; the log has a progress line per size).
set -u
OUT=${OUT:-gpu-out}
PY=${PYTHON:-python3}
PRESET=${PRESET:-gpu}
STAGES=${STAGES:-fused}
# a misspelt stage ran nothing and exited 0, a lease spent on env.txt: refuse it before anything runs
KNOWN_STAGES="fused fused-gru warps h128 graphs deep preset gated gated-carry tests"
read -r -a chosen <<<"$STAGES"
if [[ ${#chosen[@]} -eq 0 ]]; then
    echo "gpu_run.sh: STAGES names no stage; the stages are: $KNOWN_STAGES" >&2
    exit 2
fi
for stage in "${chosen[@]}"; do
    if [[ " $KNOWN_STAGES " != *" $stage "* ]]; then
        echo "gpu_run.sh: unknown stage '$stage' in STAGES='$STAGES'; the stages are: $KNOWN_STAGES" >&2
        exit 2
    fi
done
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

# the preset with the default implementations, in one process, timed as a whole (is it the 5 minutes it is meant
# to be?). The projections comparison of the second H200 run was: --impl rnn-jax-{autodiff,fast}-{in-step,hoisted}
# --impl flax --impl torch --impl lower-bound (see the README).
if [[ " $STAGES " == *" preset "* ]]; then
    start=$(date +%s)
    timeout 330 $PY -m rnn_jax bench --preset "$PRESET" --json "$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.log"
    echo "preset $PRESET: $(($(date +%s) - start)) s in all" | tee -a "$OUT/bench-gpu.log"
fi

# the fused kernels: do they compile and agree (the tests, with the gradient checker's fused_vjp pair), and what do
# they save where cuDNN won (long T, small products)? H <= 128 only: the kernel keeps W_s on chip.
if [[ " $STAGES " == *" fused "* ]]; then
    fused_workers=()
    $PY -c "import xdist" 2>/dev/null && fused_workers=(-n 8)  # compiling dominates: one worker per two cores
    fused_tests=(tests/test_fused.py tests/test_gradcheck.py::test_every_path_agrees_and_the_report_says_so)
    timeout 140 $PY -m pytest -q -m "not slow" -p no:cacheprovider -p no:benchmark "${fused_workers[@]}" \
        "${fused_tests[@]}" 2>&1 | tail -n 40 | tee "$OUT/fused-tests.log"
    if [[ "$PRESET" == gpu ]]; then
        sizes=(--config 32,100,8,64,8 --config 64,256,32,128,32 --config 1,1000,1,32,1 --config 128,512,64,128,64)
        lstm_sizes=(--config 32,100,8,64,8 --config 1,1000,1,32,1 --config 64,256,32,64,32)
        timeout 100 $PY -m experiments.fused_kernels --out "$OUT/fused_kernels" 2>&1 | tee "$OUT/fused-kernels.log"
    else
        sizes=(--preset "$PRESET")
        lstm_sizes=(--preset "$PRESET")
        timeout 100 $PY -m experiments.fused_kernels --quick --interpret --out "$OUT/fused_kernels" 2>&1 \
            | tee "$OUT/fused-kernels.log"
    fi
    timeout 160 $PY -m rnn_jax bench "${sizes[@]}" --impl rnn-jax-fast --impl rnn-jax-fused --impl torch \
        --json "$OUT/bench-fused.json" 2>&1 | tee "$OUT/bench-fused.log"
    # the gated cells hold four (three) W_s blocks: also time them read from memory at every step
    timeout 140 $PY -m rnn_jax bench --cell lstm "${lstm_sizes[@]}" --impl rnn-jax-fast --impl rnn-jax-fused \
        --impl rnn-jax-fused-per-step --impl torch --json "$OUT/bench-fused-lstm.json" 2>&1 \
        | tee "$OUT/bench-fused-lstm.log"
fi

if [[ " $STAGES " == *" fused-gru "* ]]; then
    gru_sizes=(--config 32,100,8,64,8 --config 1,1000,1,32,1 --config 64,256,32,64,32)
    [[ "$PRESET" == gpu ]] || gru_sizes=(--preset "$PRESET")
    timeout 140 $PY -m rnn_jax bench --cell gru "${gru_sizes[@]}" --impl rnn-jax-fast --impl rnn-jax-fused \
        --impl rnn-jax-fused-per-step --impl torch --json "$OUT/bench-fused-gru.json" 2>&1 \
        | tee "$OUT/bench-fused-gru.log"
fi

# the gated cells' forward kernels carrying h_{t-1} W_s's gate blocks, formed at the end of the step before
# (KernelOptions(carry_products=True), as the Elman forward kernel does: 6.6x faster alone at H = 128), against the
# default (carrying h_{t-1}), 2 cells x 3 sizes, about 150 s; if the -carry rows win, it can become the default
if [[ " $STAGES " == *" gated-carry "* ]]; then
    carry_sizes=(--config 32,100,8,64,8 --config 1,1000,1,32,1 --config 64,256,32,64,32)
    [[ "$PRESET" == gpu ]] || carry_sizes=(--preset "$PRESET")
    for cell in lstm gru; do
        timeout 90 $PY -m rnn_jax bench --cell $cell "${carry_sizes[@]}" --repeats 9 --impl rnn-jax-fused \
            --impl rnn-jax-fused-carry --impl torch --json "$OUT/bench-$cell-carry.json" 2>&1 \
            | tee "$OUT/bench-$cell-carry.log"
    done
fi

# the gated cells' kernels with the default 8 Triton warps per program against 4 (their four (three) W_s blocks
# fill as many registers as the Elman network's H = 128, whose reverse kernel 8 warps made 13x faster)
if [[ " $STAGES " == *" warps "* ]]; then
    warps_size=(--config 64,256,32,64,32)
    [[ "$PRESET" == gpu ]] || warps_size=(--preset "$PRESET")
    for cell in lstm gru; do
        timeout 50 $PY -m rnn_jax bench --cell $cell "${warps_size[@]}" --repeats 9 --impl rnn-jax-fused \
            --impl rnn-jax-fused-4warps --json "$OUT/bench-$cell-warps.json" 2>&1 | tee "$OUT/bench-$cell-warps.log"
    done
fi

# the Elman network at H = 128 since its forward kernel carries s_{t-1} W_s (6.6x faster alone, never timed in a
# train step): the forward-carry study (30 s), then the train step fused against the scan and cuDNN (2 sizes, 90 s);
# they won (2026-11-29: 1.74-1.80x), so FUSED_FAST_MAX_HIDDEN in rnn_jax/unroll.py is 128 for the Elman cell
if [[ " $STAGES " == *" h128 "* ]]; then
    if [[ "$PRESET" == gpu ]]; then
        timeout 60 $PY -m experiments.fused_forward_carry --out "$OUT/fused_forward_carry" 2>&1 \
            | tee "$OUT/fused-forward-carry.log"
        h128_sizes=(--config 64,256,32,128,32 --config 128,512,64,128,64)
    else
        timeout 60 $PY -m experiments.fused_forward_carry --quick --interpret --out "$OUT/fused_forward_carry" 2>&1 \
            | tee "$OUT/fused-forward-carry.log"
        h128_sizes=(--preset "$PRESET")
    fi
    timeout 120 $PY -m rnn_jax bench "${h128_sizes[@]}" --repeats 9 --impl rnn-jax-fast --impl rnn-jax-fused \
        --impl torch --json "$OUT/bench-elman-h128.json" 2>&1 | tee "$OUT/bench-elman-h128.log"
fi

# the scan's loop as CUDA graphs (bench.GPU_COMMAND_BUFFERS: XLA's command buffers with while loops, per
# compilation) where cuDNN was ahead: long T with H = 128 and 256, and the single sequence; the bound so compiled
# too. Measured on one H200 (2026-11-29): the -graphs train steps were 1.09-1.25x slower, so the default stays
if [[ " $STAGES " == *" graphs "* ]]; then
    graph_sizes=(--config 64,256,32,128,32 --config 128,512,64,256,64 --config 1,1000,1,32,1)
    [[ "$PRESET" == gpu ]] || graph_sizes=(--preset "$PRESET")
    timeout 220 $PY -m rnn_jax bench "${graph_sizes[@]}" --repeats 9 --impl rnn-jax-fast --impl rnn-jax-fast-graphs \
        --impl rnn-jax-fast-graphs-unrolled --impl torch --impl lower-bound --impl lower-bound-graphs \
        --json "$OUT/bench-graphs.json" 2>&1 | tee "$OUT/bench-graphs.log"
fi

# a deep network's input products hoisted out of each layer's scan, or in the step (rnn_jax.deep)
if [[ " $STAGES " == *" deep "* ]]; then
    deep_quick=()
    [[ "$PRESET" == gpu ]] || deep_quick=(--quick)
    timeout 180 $PY -m experiments.deep_projections "${deep_quick[@]}" --out "$OUT/deep_projections" 2>&1 \
        | tee "$OUT/deep-projections.log"
fi

# the gated cells' hand-written backward passes (backward="bptt") against autodiff and cuDNN, both cells in 300 s
if [[ " $STAGES " == *" gated "* ]]; then
    gated_preset=$([[ "$PRESET" == gpu ]] && echo standard || echo "$PRESET")
    for cell in lstm gru; do
        timeout 150 $PY -m rnn_jax bench --cell $cell --preset "$gated_preset" --impl rnn-jax-autodiff \
            --impl rnn-jax-bptt --impl torch --json "$OUT/bench-$cell-bptt.json" 2>&1 | tee "$OUT/bench-$cell-bptt.log"
    done
fi

# the invariants on the GPU: fast path = autodiff, hand BPTT = jax.grad, cells = their Python-loop oracle
# (-p no:benchmark: pytest-benchmark, where installed, warns under xdist, and our warnings are errors)
if [[ " $STAGES " == *" tests "* ]]; then
    workers=()
    $PY -c "import xdist" 2>/dev/null && workers=(-n 8)
    tests=(tests/test_unroll.py tests/test_bptt.py tests/test_cells.py tests/test_gated_cells.py tests/test_fused.py
           tests/test_bench.py::test_fast_path_equals_autodiff tests/test_deep.py::test_deep_hoisted_projections_equal_in_step_float64
           tests/test_gradcheck.py::test_every_path_agrees_and_the_report_says_so)
    timeout 200 $PY -m pytest -q -x -m "not slow" -p no:cacheprovider -p no:benchmark "${workers[@]}" "${tests[@]}" \
        2>&1 | tail -n 40 | tee "$OUT/tests.log"
fi
