"""The benchmark harness: rnn-jax beside flax, PyTorch and a measured lower bound, in one process.

For each problem size (B, T, D, H, O) and cell, every implementation gets the same parameters and
the same batch, and is timed in two modes, in float32 (full-precision products: TensorFloat-32 is off on GPUs
for JAX, through ``jax.default_matmul_precision(MATMUL_PRECISION)``, and for torch):

    forward   y = readout(unroll(x))                                   [T, B, O]
    train     loss = mean |y - d|^2;  g = BPTT;  clip(g, global norm 1);  Adam update

Repeats are interleaved (A B C A B C ...), so a noisy, shared machine slows every implementation
alike and the ratios hold, with a pause before each sample (`SETTLE_S`) so that none starts while
the previous one's threads still spin; each record gives the median and the 10th/90th percentiles of the
time per call, the compile time apart, and the peak memory. Before any timing, every
implementation's loss and gradient at the shared initial parameters are compared with rnn-jax's
autodiff path (`Agreement`), so no one wins by computing something else.

The implementations (`default_implementations`):
  rnn-jax-autodiff  `rnn_jax.train.make_train_step` with ``backward="autodiff"`` (jax.grad through lax.scan);
  rnn-jax-fast      the default, ``backward="fast"`` (for elman the hand-derived BPTT custom VJP, see
                    `rnn_jax.bptt.concatenated_backward`);
  rnn-jax-bf16      ``precision="bfloat16"``: mixed precision (float32 parameters, Adam state, loss and gradient
                    sums; the unroll and its backward pass in bfloat16); agrees to ``BF16_RTOL``, not 1e-4,
                    of the largest gradient entry over all parameters;
  rnn-jax-fast-Ndev with N = 2, 4, ... devices when JAX sees several: the fast path's data-parallel
                    step, the batch split along B (`rnn_jax.distributed`); its records carry ``devices``;
  flax              ``flax.linen.RNN`` over the matching flax cell (SimpleCell, OptimizedLSTMCell, GRUCell),
                    a Dense read-out, the same optax chain;
  torch             ``torch.nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` + ``nn.Linear`` (parameters through
                    `rnn_jax.interop.torch`), ``clip_grad_norm_`` and ``torch.optim.Adam``, when
                    torch is importable: timed with 1 thread and with all threads, interleaved, and
                    reported under the better setting (named in the record, e.g. "torch-1thread");
  lower-bound       measured: the T sequential [B, H] @ [H, G H] products of the forward pass (forward; G
                    gate blocks), twice that plus the weight-gradient flops at the machine's square-matmul
                    rate (train);
  lower-bound-Ndev  the same with each chain on [B / N, H] slices, one per device (with several devices).

On a GPU, ``--impl`` can also pick ``rnn-jax-fast-graphs``, ``rnn-jax-fast-graphs-unrolled`` and
``lower-bound-graphs``: the same computations compiled with `GPU_COMMAND_BUFFERS` (or
`GPU_COMMAND_BUFFERS_UNROLLED`), so that a scan's loop runs as CUDA graphs instead of kernel launches from the host.

The ``long`` preset (T = 1000, 10000, 100000) times `long_implementations` instead: the autodiff
and fast paths, the autodiff path with ``remat`` every 100 steps and every ceil(sqrt(T)) steps, and
the lower bound.

Peak memory: for the JAX implementations, XLA's buffer assignment of the compiled step
(arguments + outputs + temporaries - aliased), exact and the same on every backend (JAX cannot
reset a device's peak counter between implementations); for torch, the CUDA allocator's peak
on a GPU, otherwise the rise of the process's resident memory during one call.

The library prints nothing: `run` returns a `BenchResult`; `format_table` renders it and
``rnn-jax bench`` prints it and writes the records as JSON.
"""

from __future__ import annotations

import functools
import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from rnn_jax import _checks, cells, distributed, fused, tasks, train
from rnn_jax.config import Config, ModelConfig, OptimConfig, TaskConfig
from rnn_jax.interop import torch as torch_layout
from rnn_jax.optim import make_optimizer

MODES = ("forward", "train")
RECORD_KEYS = ("config", "impl", "mode", "median_ms", "p10_ms", "p90_ms", "compile_s", "peak_mem_mb", "devices")
OPTIONAL_KEYS = ("devices",)  # records written before the device-scaling rows lack it (then 1)
CONFIG_KEYS = ("cell", "B", "T", "D", "H", "O")

PRESETS: dict[str, tuple[tuple[int, int, int, int, int], ...]] = {
    # tiny: the whole harness in a few seconds on a CPU (the test suite runs it)
    "quick": ((4, 8, 2, 8, 2),),
    # the standard configurations, including the latency-bound (1, 1000, 1, 32, 1)
    "standard": (
        (32, 100, 8, 64, 8),
        (64, 256, 32, 128, 32),
        (128, 512, 64, 256, 64),
        (1, 1000, 1, 32, 1),
        (256, 64, 128, 512, 128),
    ),  # fmt: skip
    # the standard ones plus one size where an accelerator pulls ahead, for about 5 minutes on one GPU: timed as a
    # whole on one H200 with the default implementations, 294 s (README, "On a GPU", third run)
    "gpu": (
        (32, 100, 8, 64, 8),
        (64, 256, 32, 128, 32),
        (128, 512, 64, 256, 64),
        (1, 1000, 1, 32, 1),
        (256, 64, 128, 512, 128),
        (256, 512, 128, 512, 128),
    ),  # fmt: skip
    # long sequences, with and without rematerialisation (`long_implementations`); B, D, H, O small so
    # that T = 100000 runs on a 2-core CPU
    "long": (
        (4, 1000, 1, 32, 1),
        (4, 10000, 1, 32, 1),
        (4, 100000, 1, 32, 1),
    ),  # fmt: skip
}
PRESET_REPEATS = {"quick": 3, "standard": 9, "gpu": 9, "long": 3}
MATMUL_PRECISION = "highest"  # full float32 products: no TensorFloat-32 on GPUs, for JAX and torch alike
BF16_RTOL = 5e-2  # bfloat16 keeps 8 bits of mantissa: its first step agrees with float32's to a few per cent
# ... of the largest gradient entry over all parameters (`GradScale` "overall"), not of each parameter's own: a
# parameter whose gradient is a sum over time that nearly cancels carries bfloat16's round-off of the terms, not of
# the sum. LSTM (1,1000,1,32,1), seed 0, 2026-11-29: b_y's gradient, (2/T) sum_t (y_t - target_t), is -0.0052 from
# terms |y_t - target_t| up to 3.4; the bfloat16 outputs are within 0.0044 of float32's (at most 0.37), yet b_y's
# gradient is 11% off its own size (b_s 4.0%, w_x, w_s, w_y under 0.9%), while the largest error over all
# parameters is 2.1% of the largest gradient entry (0.037). Elman there: 2.4% per parameter, 0.7% overall.

LEARNING_RATE = 1e-3

# XLA:GPU records runs of kernels as CUDA graphs ("command buffers") to save their launch costs, but by default not
# a while loop: each iteration of a `lax.scan` is launched from the host, kernel by kernel (about 6 us a step on
# one H200, README "On a GPU"). These compiler options add while loops and conditionals to what XLA records (the
# whole scan one graph with a conditional loop node; every type XLA records by default is listed too, since the
# option replaces the list) down to one-kernel graphs; the `_UNROLLED` form also flattens a loop of known trip
# count into the graph. They apply to one compilation (``.compile(compiler_options=...)``), so the harness times
# them beside the default in one process; elsewhere than on a GPU XLA accepts and ignores them.
GPU_COMMAND_BUFFERS: dict[str, str | int | bool] = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,CONDITIONAL,WHILE",
    "xla_gpu_graph_min_graph_size": 1,
}
GPU_COMMAND_BUFFERS_UNROLLED: dict[str, str | int | bool] = {
    **GPU_COMMAND_BUFFERS,
    "xla_gpu_command_buffer_unroll_loops": True,
}
CLIP_NORM = 1.0


class Shape(NamedTuple):
    """One benchmark problem: the cell and its sizes."""

    cell: str
    B: int  # batch
    T: int  # time steps
    D: int  # input width
    H: int  # state width
    O: int  # output width  # noqa: E741

    def to_json(self) -> dict[str, Any]:
        return self._asdict()


class Problem(NamedTuple):
    """What every implementation receives: the shared initial parameters and one batch (float32)."""

    shape: Shape
    params: Any  # the rnn-jax cell's Params (ElmanParams: w_x [D, H], w_s [H, H], b_s [H], w_y [H, O], b_y [O])
    inputs: np.ndarray  # [T, B, D]
    targets: np.ndarray  # [T, B, O]


class Unavailable(Exception):
    """An implementation cannot run this problem (missing package, no counterpart of the cell)."""


class Prepared(NamedTuple):
    """An implementation, compiled and ready: each callable runs one call and waits for its result."""

    run: dict[str, Callable[[], None]]  # mode -> one forward pass / one train step
    compile_s: dict[str, float]  # mode -> seconds (0 for eager frameworks)
    peak_mem_mb: dict[str, float]  # mode -> MB
    first_step: tuple[float, Any] | None  # (loss, gradients as the rnn-jax Params) at the initial parameters


GradScale = Literal["parameter", "overall"]


class Implementation(NamedTuple):
    """A named way to run a `Problem`: ``prepare(problem) -> Prepared`` (or raise `Unavailable`)."""

    name: str
    prepare: Callable[[Problem], Prepared]
    variants: tuple[str, ...] = ()  # names timed separately and reported as the better one (torch's threads)
    rtol: float | None = None  # its own agreement tolerance (bfloat16); None: the run's
    devices: int = 1  # devices the batch is split over (data parallel)
    grad_scale: GradScale = "parameter"  # what its gradient error is relative to (`check_agreement`)


class Agreement(NamedTuple):
    """One implementation's first step against the reference (rnn-jax's autodiff path)."""

    shape: Shape
    impl: str
    loss: float
    loss_rel_err: float  # |loss - loss_ref| / |loss_ref|
    grad_rel_err: float  # max |g - g_ref| / max |g_ref|, per parameter (the largest) or over all (`GradScale`)
    agrees: bool


class BenchResult(NamedTuple):
    """What `run` returns."""

    records: list[dict[str, Any]]  # the JSON records (RECORD_KEYS)
    agreement: list[Agreement]
    skipped: list[tuple[Shape, str, str]]  # (shape, impl, reason)
    notes: dict[str, str]  # the backend, versions, thread settings
    failed: tuple[tuple[Shape, str, str], ...] = ()  # (shape, impl, error): its compile or first step raised


# ------------------------------------------------------------------ measuring


def _compiled_mb(compiled) -> float:
    """Device memory of one compiled call from XLA's buffer assignment (arguments + outputs + temporaries - aliased)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return float("nan")
    used = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
    return (used - stats.alias_size_in_bytes) / 2**20


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_rise_mb(fn: Callable[[], None]) -> float:
    """How far the process's resident memory rises above its starting level while ``fn`` runs (sampled)."""
    before = _rss_mb()
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(peak[0], _rss_mb()) - before


def _problem(shape: Shape, seed: int) -> Problem:
    k_params, k_x, k_d = jax.random.split(jax.random.key(seed), 3)
    params = cells.get(shape.cell).init(k_params, shape.D, shape.H, shape.O)
    inputs = jax.random.normal(k_x, (shape.T, shape.B, shape.D), jnp.float32)
    targets = jax.random.normal(k_d, (shape.T, shape.B, shape.O), jnp.float32)
    return Problem(shape, jax.device_get(params), np.asarray(inputs), np.asarray(targets))


def _blocking(fn: Callable[[], Any]) -> Callable[[], None]:
    return lambda: jax.block_until_ready(fn())


# ------------------------------------------------------------------ rnn-jax


def _optimizer():
    return make_optimizer(OptimConfig(optimizer="adam", learning_rate=LEARNING_RATE, clip="global_norm",
                                      clip_threshold=CLIP_NORM, schedule="constant"))  # fmt: skip


def rnn_jax_implementation(
    name: str,
    *,
    devices: int = 1,
    rtol: float | None = None,
    grad_scale: GradScale = "parameter",
    kernel_options: fused.KernelOptions | None = None,
    compiler_options: Mapping[str, str | int | bool] | None = None,
    **model_options,
) -> Implementation:
    """rnn-jax's own train step (`rnn_jax.train.make_train_step`) with these `ModelConfig` options.

    With ``devices`` > 1 the batch is split along B over that many devices (`rnn_jax.distributed`:
    parameters and optimizer state replicated, the jitted step unchanged apart from its shardings);
    ``rtol`` is its own agreement tolerance (None: the run's); ``kernel_options``: the fused kernels' options
    (`rnn_jax.fused.kernel_options`) while it compiles; ``compiler_options``: XLA options for the compilation of
    the forward pass and the train step (`GPU_COMMAND_BUFFERS`: on a GPU only).
    """

    def prepare(problem: Problem) -> Prepared:
        if kernel_options is None:
            return prepare_with_defaults(problem)
        with fused.kernel_options(kernel_options):
            return prepare_with_defaults(problem)

    def prepare_with_defaults(problem: Problem) -> Prepared:
        shape = problem.shape
        if model_options.get("backward") == "bptt" and shape.cell not in ("elman", "lstm", "gru"):
            raise Unavailable(f"backward={model_options['backward']!r} exists for elman, lstm and gru only")
        if model_options.get("backward") == "fused":
            cell = cells.get(shape.cell)
            if cell not in fused.SCANS:
                raise Unavailable("backward='fused' (rnn_jax.fused) exists for elman, lstm and gru only")
            if not fused.compiled():
                raise Unavailable(
                    f"the fused kernels compile on a GPU only (here, {jax.default_backend()}, they "
                    "would run in Pallas's interpreter: a test of their values, not of their speed)"
                )
            if not fused.supported(shape.H, cell):
                raise Unavailable(
                    f"the fused kernel keeps W_s on chip: H <= {fused.max_hidden(cell)} for {shape.cell}, got {shape.H}"
                )
        _check_devices(devices, shape)
        _check_command_buffers(compiler_options)
        config = Config(
            model=ModelConfig(model=shape.cell, hidden=shape.H, **model_options),
            task=TaskConfig(seq_len=shape.T, batch_size=shape.B),
        )
        task = _RegressionTask(shape.D, shape.O)
        optimizer = _optimizer()
        mesh = distributed.make_mesh(devices) if devices > 1 else None
        inputs, targets = jnp.asarray(problem.inputs), jnp.asarray(problem.targets)
        if mesh is None:
            params = jax.device_put(problem.params)
        else:
            params = distributed.replicate(problem.params, mesh)
            inputs, targets = distributed.shard((inputs, targets), mesh, axis=1)  # [T, B, ...] split along B
        batch = tasks.Batch(inputs, targets, None, None)
        loss_fn = train.make_loss_fn(config.model, task)
        value_and_grad = jax.value_and_grad(loss_fn) if mesh is None else distributed.value_and_grad(loss_fn, mesh)
        loss, grads = jax.jit(value_and_grad)(params, batch)  # the first step as the train step computes it

        forward = jax.jit(functools.partial(train.forward, config.model, task))
        start = time.perf_counter()
        forward_c = forward.lower(params, batch).compile(compiler_options)
        forward_s = time.perf_counter() - start

        step = train.make_train_step(config, task, optimizer, mesh)
        state = train.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
        if mesh is not None:
            state = distributed.replicate(state, mesh)
        start = time.perf_counter()
        step_c = step.lower(state, batch).compile(compiler_options)
        step_s = time.perf_counter() - start
        holder = [jax.tree.map(jnp.copy, state)]

        def train_once():
            holder[0], metrics = step_c(holder[0], batch)
            jax.block_until_ready(metrics)

        return Prepared(
            run={"forward": _blocking(lambda: forward_c(params, batch)), "train": train_once},
            compile_s={"forward": forward_s, "train": step_s},
            peak_mem_mb={"forward": _compiled_mb(forward_c), "train": _compiled_mb(step_c)},
            first_step=(float(loss), jax.device_get(grads)),
        )

    return Implementation(name, prepare, rtol=rtol, devices=devices, grad_scale=grad_scale)


def _check_command_buffers(compiler_options: Mapping[str, Any] | None) -> None:
    """Raises `Unavailable` for XLA:GPU's command-buffer options (`GPU_COMMAND_BUFFERS`) off a GPU, where XLA
    ignores them and the implementation would time its plain twin again."""
    if compiler_options and jax.default_backend() != "gpu":
        raise Unavailable(
            f"XLA:GPU command buffers (CUDA graphs): on {jax.default_backend()} these compiler options do nothing"
        )


class _RegressionTask:
    """The benchmark's task for `rnn_jax.train`: squared error at every step (no padding)."""

    loss = "squared_error"

    def __init__(self, input_size: int, output_size: int):
        self.input_size, self.output_size = input_size, output_size


# ------------------------------------------------------------------ flax


def _flax_elman(problem: Problem):
    import flax.linen as nn

    p = problem.params
    variables = {
        "params": {
            "rnn": {"cell": {"i": {"kernel": p.w_x, "bias": p.b_s}, "h": {"kernel": p.w_s}}},
            "readout": {"kernel": p.w_y, "bias": p.b_y},
        }
    }

    def to_params(tree):
        g = tree["params"]
        return type(p)(g["rnn"]["cell"]["i"]["kernel"], g["rnn"]["cell"]["h"]["kernel"], g["rnn"]["cell"]["i"]["bias"],
                       g["readout"]["kernel"], g["readout"]["bias"])  # fmt: skip

    return nn.SimpleCell(problem.shape.H, name="cell"), variables, to_params


def _blocks(array, names: str) -> dict[str, np.ndarray]:
    """The gate blocks of a [..., G H] array by name: ``{"i": [..., H], "f": ...}``."""
    return dict(zip(names, np.split(np.asarray(array), len(names), axis=-1), strict=True))


def _flax_lstm(problem: Problem):
    """``OptimizedLSTMCell`` (flax's fused LSTMCell, the same parameters): input kernels ``i{g}`` without bias,
    recurrent kernels ``h{g}`` with the bias, for g in (i, f, g, o); the carry is (c, h) and the output h."""
    import flax.linen as nn

    p = problem.params
    w_x, w_s, b_s = _blocks(p.w_x, "ifgo"), _blocks(p.w_s, "ifgo"), _blocks(p.b_s, "ifgo")
    cell = {}
    for g in "ifgo":
        cell[f"i{g}"] = {"kernel": w_x[g]}
        cell[f"h{g}"] = {"kernel": w_s[g], "bias": b_s[g]}
    variables = {"params": {"rnn": {"cell": cell}, "readout": {"kernel": p.w_y, "bias": p.b_y}}}

    def to_params(tree):
        c, r = tree["params"]["rnn"]["cell"], tree["params"]["readout"]
        cat = lambda side, leaf: jnp.concatenate([c[f"{side}{g}"][leaf] for g in "ifgo"], axis=-1)  # noqa: E731
        return type(p)(cat("i", "kernel"), cat("h", "kernel"), cat("h", "bias"), r["kernel"], r["bias"])

    return nn.OptimizedLSTMCell(problem.shape.H, name="cell"), variables, to_params


def _flax_gru(problem: Problem):
    """``GRUCell``: r, z = sigmoid(x W_i{r,z} + b_i{r,z} + h W_h{r,z}), n = tanh(x W_in + b_in + r (h W_hn + b_hn)).

    flax has one bias for r and z where rnn-jax (PyTorch's form) has two, b_x and b_s; their sum goes
    in, and its gradient is the gradient of each of them.
    """
    import flax.linen as nn

    p = problem.params
    w_x, w_s, b_x, b_s = (_blocks(a, "rzn") for a in (p.w_x, p.w_s, p.b_x, p.b_s))
    cell = {
        "ir": {"kernel": w_x["r"], "bias": b_x["r"] + b_s["r"]},
        "iz": {"kernel": w_x["z"], "bias": b_x["z"] + b_s["z"]},
        "in": {"kernel": w_x["n"], "bias": b_x["n"]},
        "hr": {"kernel": w_s["r"]},
        "hz": {"kernel": w_s["z"]},
        "hn": {"kernel": w_s["n"], "bias": b_s["n"]},
    }
    variables = {"params": {"rnn": {"cell": cell}, "readout": {"kernel": p.w_y, "bias": p.b_y}}}

    def to_params(tree):
        c, r = tree["params"]["rnn"]["cell"], tree["params"]["readout"]
        cat = lambda *arrays: jnp.concatenate(arrays, axis=-1)  # noqa: E731
        return type(p)(
            cat(c["ir"]["kernel"], c["iz"]["kernel"], c["in"]["kernel"]),
            cat(c["hr"]["kernel"], c["hz"]["kernel"], c["hn"]["kernel"]),
            cat(c["ir"]["bias"], c["iz"]["bias"], c["in"]["bias"]),
            cat(c["ir"]["bias"], c["iz"]["bias"], c["hn"]["bias"]),
            r["kernel"],
            r["bias"],
        )

    return nn.GRUCell(problem.shape.H, name="cell"), variables, to_params


FLAX_CELLS: dict[str, Callable] = {"elman": _flax_elman, "lstm": _flax_lstm, "gru": _flax_gru}
"""cell name -> ``problem -> (flax cell, variables holding the problem's parameters, variables -> rnn-jax Params)``."""


def flax_implementation() -> Implementation:
    """``flax.linen.RNN`` over the cell of `FLAX_CELLS`, a Dense read-out, the same optax chain."""

    def prepare(problem: Problem) -> Prepared:
        if problem.shape.cell not in FLAX_CELLS:
            raise Unavailable(f"no flax counterpart registered for cell {problem.shape.cell!r}")
        import flax.linen as nn
        import optax

        cell, variables, to_params = FLAX_CELLS[problem.shape.cell](problem)
        out = problem.shape.O

        class Network(nn.Module):
            @nn.compact
            def __call__(self, xs):
                states = nn.RNN(cell, time_major=True, name="rnn")(xs)
                return nn.Dense(out, name="readout")(states)

        network = Network()
        variables = jax.device_put(variables)
        xs, ds = jnp.asarray(problem.inputs), jnp.asarray(problem.targets)

        def loss_fn(v, xs, ds):
            return jnp.mean(jnp.square(network.apply(v, xs) - ds))

        optimizer = _optimizer()

        def step(state, xs, ds):
            v, opt_state = state
            loss, grads = jax.value_and_grad(loss_fn)(v, xs, ds)
            updates, opt_state = optimizer.update(grads, opt_state, v)
            return (optax.apply_updates(v, updates), opt_state), loss

        loss, grads = jax.jit(jax.value_and_grad(loss_fn))(variables, xs, ds)
        start = time.perf_counter()
        forward_c = jax.jit(network.apply).lower(variables, xs).compile()
        forward_s = time.perf_counter() - start
        state = (variables, optimizer.init(variables))
        start = time.perf_counter()
        step_c = jax.jit(step, donate_argnums=0).lower(state, xs, ds).compile()
        step_s = time.perf_counter() - start
        holder = [jax.tree.map(jnp.copy, state)]

        def train_once():
            holder[0], loss = step_c(holder[0], xs, ds)
            jax.block_until_ready(loss)

        return Prepared(
            run={"forward": _blocking(lambda: forward_c(variables, xs)), "train": train_once},
            compile_s={"forward": forward_s, "train": step_s},
            peak_mem_mb={"forward": _compiled_mb(forward_c), "train": _compiled_mb(step_c)},
            first_step=(float(loss), jax.device_get(to_params(grads))),
        )

    return Implementation("flax", prepare)


# ------------------------------------------------------------------ torch


def _torch_module(problem: Problem, torch):
    """``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and an ``nn.Linear`` read-out holding the problem's parameters, loaded
    through `rnn_jax.interop.torch` (``to_torch``), and the gradients read back through ``from_torch``.

    Where rnn-jax has one bias and PyTorch two (Elman, LSTM), ``to_torch`` puts it in ``bias_ih_l0`` and
    zeros in ``bias_hh_l0``, which stays frozen at zero so that the networks stay the same.
    """
    p, s = problem.params, problem.shape
    model = torch_layout.model_of(p)
    modules = {"elman": lambda: torch.nn.RNN(s.D, s.H, nonlinearity="tanh"), "lstm": lambda: torch.nn.LSTM(s.D, s.H),
               "gru": lambda: torch.nn.GRU(s.D, s.H)}  # fmt: skip
    rnn, readout = modules[model](), torch.nn.Linear(s.H, s.O)
    rnn_state, linear_state = torch_layout.to_torch(p)
    rnn.load_state_dict({k: torch.from_numpy(v) for k, v in rnn_state.items()})
    readout.load_state_dict({k: torch.from_numpy(v) for k, v in linear_state.items()})
    if model != "gru":
        rnn.bias_hh_l0.requires_grad_(False)

    def grads():
        g = lambda q: np.zeros(tuple(q.shape), np.float32) if q.grad is None else q.grad.detach().cpu().numpy()  # noqa: E731
        return torch_layout.from_torch({k: g(q) for k, q in rnn.named_parameters()},
                                       {k: g(q) for k, q in readout.named_parameters()}, model=model)  # fmt: skip

    return rnn, readout, grads


TORCH_CELLS: dict[str, Callable] = {"elman": _torch_module, "lstm": _torch_module, "gru": _torch_module}
"""cell name -> ``(problem, torch) -> (recurrent module, nn.Linear read-out, () -> gradients as rnn-jax Params)``."""


def torch_implementation() -> Implementation:
    """``torch.nn.RNN`` (cuDNN on a GPU) with 1 thread and with all threads, on the device JAX uses when it is CUDA."""
    threads = os.cpu_count() or 1
    variants = ("torch-1thread",) if threads == 1 else ("torch-1thread", f"torch-{threads}threads")

    def prepare(problem: Problem) -> Prepared:
        try:
            import torch
        except ImportError:
            raise Unavailable("torch is not installed (pip install 'rnn-jax[bench]')") from None
        if problem.shape.cell not in TORCH_CELLS:
            raise Unavailable(f"no torch counterpart registered for cell {problem.shape.cell!r}")
        device = torch.device("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu")
        if device.type == "cuda":  # float32 means float32 here, as for JAX (MATMUL_PRECISION)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        rnn, readout, grads = TORCH_CELLS[problem.shape.cell](problem, torch)
        rnn, readout = rnn.to(device), readout.to(device)
        xs = torch.tensor(problem.inputs).to(device)
        ds = torch.tensor(problem.targets).to(device)
        trained = [q for q in (*rnn.parameters(), *readout.parameters()) if q.requires_grad]
        optimizer = torch.optim.Adam(trained, lr=LEARNING_RATE)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()

        def loss_of():
            states, _ = rnn(xs)
            return torch.mean(torch.square(readout(states) - ds))

        def forward():
            with torch.no_grad():
                readout(rnn(xs)[0])
            sync()

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, CLIP_NORM)
            optimizer.step()
            sync()

        first = loss_of()
        first.backward()
        first_step = (float(first.detach().cpu()), grads())
        for q in trained:
            q.grad = None

        def with_threads(fn, n):
            def run():
                torch.set_num_threads(n)
                fn()

            return run

        run = {}
        for variant, n in zip(variants, (1, threads), strict=False):
            run[f"forward@{variant}"] = with_threads(forward, n)
            run[f"train@{variant}"] = with_threads(step, n)
        peak = {}
        for mode, fn in (("forward", run[f"forward@{variants[-1]}"]), ("train", run[f"train@{variants[-1]}"])):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                fn()
                peak[mode] = torch.cuda.max_memory_allocated(device) / 2**20
            else:
                peak[mode] = _rss_rise_mb(fn)
        return Prepared(run=run, compile_s={"forward": 0.0, "train": 0.0}, peak_mem_mb=peak, first_step=first_step)

    return Implementation("torch", prepare, variants)


# ------------------------------------------------------------------ the lower bound


def lower_bound_implementation(
    devices: int = 1, compiler_options: Mapping[str, str | int | bool] | None = None
) -> Implementation:
    """The measured floor: T dependent [B, H] @ [H, G H] products (forward); twice that plus the weight gradients
    (train), for a cell with G gate blocks (Elman 1, GRU 3, LSTM 4). With ``devices`` > 1
    ("lower-bound-Ndev"), the chains run on [B / N, H] slices, one per device (`jax.shard_map`),
    the floor of a data-parallel step: on a CPU, XLA runs each small product on one core, so N
    devices are how those products use N cores. With ``compiler_options`` (`GPU_COMMAND_BUFFERS`, on a GPU:
    "lower-bound-graphs") the chains' loops run as CUDA graphs, the floor of the implementations so compiled.

    A recurrent network's step t cannot start before step t - 1 ends, in either direction, so no
    implementation of the forward pass beats the chain of T state products, and no train step
    beats two such chains (forward, then backward) plus the arithmetic of the weight gradients,
    2 T B (D G H + H G H + H O) flops, done at the machine's matmul rate: measured as one square
    n x n x n product of the same flop count, the shape matrix libraries run fastest. Both are
    measured with XLA on this machine, in the same interleaved samples as the implementations;
    elementwise work and the input and output projections are left out, so the bound is strict
    (for G > 1 the chain adds the G blocks of each product, B G H additions, and the backward
    chain repeats the [B, H] error G times, so that it stays a chain of [B, H] states).
    """

    def prepare(problem: Problem) -> Prepared:
        s = problem.shape
        _check_devices(devices, s)
        _check_command_buffers(compiler_options)
        rows = s.B // devices  # the batch rows of one device's chain
        gates = torch_layout.GATE_BLOCKS[s.cell]
        q = jnp.asarray(np.linalg.qr(np.random.default_rng(0).normal(size=(s.H, s.H)))[0], jnp.float32)
        w = q if gates == 1 else jnp.tile(q, (1, gates)) / gates  # [H, G H]; the blocks' sum is q: no growth
        s0 = jnp.ones((s.B, s.H), jnp.float32) / np.sqrt(s.H)
        flops = 2 * s.T * s.B * (s.D * gates * s.H + s.H * gates * s.H + s.H * s.O)
        n = max(1, round((flops / devices / 2) ** (1 / 3)))  # one device's share of the weight-gradient flops
        squares = jnp.ones((devices * n, n), jnp.float32) / n  # an [n, n] block per device

        def product(c, w):  # [B, H] @ [H, G H], its G blocks summed: [B, H]
            return c @ w if gates == 1 else (c @ w).reshape(rows, gates, s.H).sum(axis=1)

        def product_t(c, w_t):  # [B, H] @ [H, H] with W^T, or [B, G H] @ [G H, H] with the error repeated G times
            return c @ w_t if gates == 1 else jnp.tile(c, (1, gates)) @ w_t

        def chain(s0, w, step=product):
            return jax.lax.scan(lambda c, _: (step(c, w), None), s0, None, length=s.T)[0]

        forward_floor = chain

        def train_floor(s0, w, square):
            # the backward chain waits for the forward one, as in BPTT; W^T is formed once, before it (inside the
            # loop, XLA:CPU's transposed-operand product took 2.5x the time per step at B = 1)
            back = chain(chain(s0, w), w.T, product_t)
            return back, square @ square

        if devices > 1:  # each device: the chains of its B / N rows and its share of the square products
            mesh = distributed.make_mesh(devices)
            split, whole = PartitionSpec(distributed.AXIS), PartitionSpec()
            forward_floor = jax.shard_map(forward_floor, mesh=mesh, in_specs=(split, whole), out_specs=split)
            train_floor = jax.shard_map(
                train_floor, mesh=mesh, in_specs=(split, whole, split), out_specs=(split, split)
            )
            s0, squares = distributed.shard((s0, squares), mesh, axis=0)

        start = time.perf_counter()
        forward_c = jax.jit(forward_floor).lower(s0, w).compile(compiler_options)
        forward_s = time.perf_counter() - start
        start = time.perf_counter()
        train_c = jax.jit(train_floor).lower(s0, w, squares).compile(compiler_options)
        train_s = time.perf_counter() - start

        return Prepared(
            run={"forward": _blocking(lambda: forward_c(s0, w)), "train": _blocking(lambda: train_c(s0, w, squares))},
            compile_s={"forward": forward_s, "train": train_s},
            peak_mem_mb={"forward": _compiled_mb(forward_c), "train": _compiled_mb(train_c)},
            first_step=None,
        )

    name = "lower-bound" if devices == 1 else f"lower-bound-{devices}dev"
    return Implementation(f"{name}-graphs" if compiler_options else name, prepare, devices=devices)


def _check_devices(devices: int, shape: Shape) -> None:
    """Raises `Unavailable` unless JAX sees ``devices`` devices and B splits evenly over them."""
    if devices > len(jax.devices()):
        raise Unavailable(f"{devices} devices asked for, {len(jax.devices())} present")
    if shape.B % devices:
        raise Unavailable(f"B = {shape.B} does not divide across {devices} devices")


def device_counts(device_count: int | None = None) -> list[int]:
    """2, 4, 8, ... up to ``device_count`` (default: the devices JAX sees); empty with one device."""
    count = len(jax.devices()) if device_count is None else device_count
    return [2**i for i in range(1, count.bit_length()) if 2**i <= count]


def scaling_implementations(device_count: int | None = None) -> list[Implementation]:
    """The fast path's data-parallel train step over each of `device_counts` devices, ``rnn-jax-fast-{n}dev``."""
    return [fast_on_devices(n) for n in device_counts(device_count)]


def fast_on_devices(devices: int) -> Implementation:
    """``rnn-jax-fast-{devices}dev``: the fast path's train step, data parallel over that many devices."""
    return rnn_jax_implementation(f"rnn-jax-fast-{devices}dev", devices=devices, backward="fast")


def default_implementations() -> list[Implementation]:
    """The reference first (rnn-jax's autodiff path), then the fast path, its bfloat16 mixed-precision variant,
    flax, torch and the lower bound; with several devices, the fast path's data-parallel scaling and the
    lower bound over as many devices too."""
    return [
        *named_implementations(["rnn-jax-autodiff", "rnn-jax-fast", "rnn-jax-bf16"]),
        *scaling_implementations(),
        *named_implementations(["flax", "torch", "lower-bound"]),
        *(lower_bound_implementation(n) for n in device_counts()),
    ]


def long_implementations() -> list[Implementation]:
    """The ``long`` preset's: rnn-jax's autodiff and fast paths without remat, the autodiff path with remat every
    100 steps and every ceil(sqrt(T)) steps, and the lower bound (flax and torch are left out: at T = 100000
    they would take most of the run)."""
    return named_implementations(
        ["rnn-jax-autodiff", "rnn-jax-fast", "rnn-jax-remat-100", "rnn-jax-remat-sqrt", "lower-bound"]
    )


def preset_implementations(preset: str | None) -> list[Implementation]:
    """The implementations a preset times: `long_implementations` for "long", else `default_implementations`."""
    return long_implementations() if preset == "long" else default_implementations()


# every implementation `--impl NAME` can pick, by name: the presets' and the variants that isolate one choice
# of the fast path (the projections hoisted out of the scan or kept in each step, whatever the backend)
NAMED_IMPLEMENTATIONS: dict[str, Callable[[], Implementation]] = {
    **{
        f"rnn-jax-{backward}{suffix}": functools.partial(rnn_jax_implementation, f"rnn-jax-{backward}{suffix}",
                                                         backward=backward, projections=projections)
        for backward in ("autodiff", "fast")
        for suffix, projections in (("", "auto"), ("-in-step", "in_step"), ("-hoisted", "hoisted"),
                                    ("-hoisted-readout", "hoisted_readout"))
    },
    "rnn-jax-bptt": lambda: rnn_jax_implementation("rnn-jax-bptt", backward="bptt"),
    "rnn-jax-fused": lambda: rnn_jax_implementation("rnn-jax-fused", backward="fused"),
    "rnn-jax-fused-per-step": lambda: rnn_jax_implementation(
        "rnn-jax-fused-per-step", backward="fused", kernel_options=fused.KernelOptions(weights_once=False)),
    "rnn-jax-fused-4warps": lambda: rnn_jax_implementation(
        "rnn-jax-fused-4warps", backward="fused", kernel_options=fused.KernelOptions(num_warps=4)),
    "rnn-jax-fused-carry": lambda: rnn_jax_implementation(
        "rnn-jax-fused-carry", backward="fused", kernel_options=fused.KernelOptions(carry_products=True)),
    "rnn-jax-bf16": lambda: rnn_jax_implementation(
        "rnn-jax-bf16", rtol=BF16_RTOL, grad_scale="overall", precision="bfloat16"
    ),
    "rnn-jax-remat-100": lambda: rnn_jax_implementation("rnn-jax-remat-100", backward="autodiff", remat="100"),
    "rnn-jax-remat-sqrt": lambda: rnn_jax_implementation("rnn-jax-remat-sqrt", backward="autodiff", remat="sqrt"),
    "rnn-jax-fast-graphs": lambda: rnn_jax_implementation(
        "rnn-jax-fast-graphs", backward="fast", compiler_options=GPU_COMMAND_BUFFERS),
    "rnn-jax-fast-graphs-unrolled": lambda: rnn_jax_implementation(
        "rnn-jax-fast-graphs-unrolled", backward="fast", compiler_options=GPU_COMMAND_BUFFERS_UNROLLED),
    "flax": flax_implementation,
    "torch": torch_implementation,
    "lower-bound": lower_bound_implementation,
    "lower-bound-graphs": lambda: lower_bound_implementation(compiler_options=GPU_COMMAND_BUFFERS),
}  # fmt: skip


def named_implementations(names: Sequence[str]) -> list[Implementation]:
    """The implementations called ``names`` (keys of `NAMED_IMPLEMENTATIONS`), in that order; the first is the
    reference of the agreement check.

    Raises:
      ValueError: for an unknown or repeated name, listing the known ones.
    """
    unknown = [n for n in names if n not in NAMED_IMPLEMENTATIONS and not _ON_DEVICES.fullmatch(n)]
    if unknown or len(set(names)) != len(names) or not names:
        raise ValueError(
            f"impl: expected distinct names among {sorted(NAMED_IMPLEMENTATIONS)} or rnn-jax-fast-Ndev, "
            f"lower-bound-Ndev (N devices, N >= 2), got {list(names)!r}"
        )
    return [NAMED_IMPLEMENTATIONS[n]() if n in NAMED_IMPLEMENTATIONS else _on_devices(n) for n in names]


_ON_DEVICES = re.compile(r"(rnn-jax-fast|lower-bound)-([2-9]|[1-9][0-9]+)dev")  # N >= 2


def _on_devices(name: str) -> Implementation:
    kind, devices = _ON_DEVICES.fullmatch(name).groups()
    return fast_on_devices(int(devices)) if kind == "rnn-jax-fast" else lower_bound_implementation(int(devices))


# ------------------------------------------------------------------ running


def check_agreement(
    shape: Shape,
    first_steps: dict[str, tuple[float, Any]],
    rtol: float | Mapping[str, float],
    grad_scale: Mapping[str, GradScale] | None = None,
) -> list[Agreement]:
    """Compares every first step (loss, gradients) with the first one given (the reference).

    The gradient error of a parameter is ``max |g - g_ref| / max |g_ref|``, so a tiny entry's
    round-off does not count as a disagreement, and the largest over the parameters is reported;
    with ``grad_scale[name] == "overall"`` (bfloat16) both maxima run over all parameters at once,
    so a parameter whose gradient is a nearly cancelling sum does not count its terms' round-off
    against the small sum (see `BF16_RTOL`). ``agrees`` when loss and gradient errors are within
    ``rtol`` (one tolerance, or one per implementation name).
    """
    (ref_loss, ref_grads), *_ = first_steps.values()
    result = []
    for name, (loss, grads) in first_steps.items():
        loss_err = abs(loss - ref_loss) / max(abs(ref_loss), np.finfo(np.float32).tiny)
        pairs = [
            (np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))), np.max(np.abs(b)))
            for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True)
        ]
        if (grad_scale or {}).get(name, "parameter") == "overall":
            grad_err = float(max(d for d, _ in pairs) / max(max(r for _, r in pairs), 1e-30))
        else:
            grad_err = float(max(d / max(r, 1e-30) for d, r in pairs))
        tol = rtol[name] if isinstance(rtol, Mapping) else rtol
        agrees = bool(np.isfinite(loss_err) and np.isfinite(grad_err) and loss_err <= tol and grad_err <= tol)
        result.append(Agreement(shape, name, float(loss), float(loss_err), grad_err, agrees))
    return result


def percentiles(samples: Sequence[float]) -> tuple[float, float, float]:
    """(median, 10th, 90th percentile) in ms of timing samples in seconds: what every record reports."""
    ms = np.asarray(samples) * 1e3
    return float(np.median(ms)), float(np.percentile(ms, 10)), float(np.percentile(ms, 90))


def run(
    shapes: Sequence[Shape],
    *,
    repeats: int = 9,
    implementations: Sequence[Implementation] | None = None,
    min_sample_s: float = 0.02,
    rtol: float = 1e-4,
    seed: int = 0,
    on_shape: Callable[[int, BenchResult], None] | None = None,
) -> BenchResult:
    """Times every implementation on every shape, interleaved, after checking that they agree.

    Args:
      shapes: the problems.
      repeats: timed samples per implementation and mode (>= 1).
      implementations: default: `default_implementations`; the first with a first step is the
        reference of the agreement check.
      min_sample_s: a sample repeats a call back to back until it lasts at least this long (each call its own
        count, at most 1000; `interleaved_samples`); its time is divided by the count.
      rtol: the agreement check's relative tolerance (float32), for implementations without their own.
      seed: the parameters and data.
      on_shape: called after each shape with the number of shapes finished and the result so far (the
        CLI saves its JSON and reports progress there, so a long run cut short keeps the shapes it finished).

    Returns:
      `BenchResult`: the records (median, p10 and p90 per call in ms, compile seconds, peak MB),
      the agreement of every first step, and what was skipped and why.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected a positive integer, got {repeats!r}")
    _checks.seed("seed", seed)
    impls = list(default_implementations() if implementations is None else implementations)
    with jax.default_matmul_precision(MATMUL_PRECISION):
        return _run(shapes, impls, repeats, min_sample_s, rtol, seed, on_shape)


def _run(shapes, impls, repeats, min_sample_s, rtol, seed, on_shape) -> BenchResult:
    records, agreement, skipped, failed = [], [], [], []
    for finished, shape in enumerate(shapes, start=1):
        problem = _problem(shape, seed)
        prepared: dict[str, Prepared] = {}
        for impl in impls:
            try:
                prepared[impl.name] = impl.prepare(problem)
            except Unavailable as reason:
                skipped.append((shape, impl.name, str(reason)))
            except Exception as error:  # one implementation that fails to compile must not stop the others
                message = str(error).strip().splitlines()[0] if str(error).strip() else ""
                failed.append((shape, impl.name, f"{type(error).__name__}: {message}"))
        first = {name: p.first_step for name, p in prepared.items() if p.first_step is not None}
        if first:
            tolerances = {impl.name: rtol if impl.rtol is None else impl.rtol for impl in impls}
            scales = {impl.name: impl.grad_scale for impl in impls}
            agreement.extend(check_agreement(shape, first, tolerances, scales))
        for mode in MODES:
            records.extend(_time_mode(shape, mode, impls, prepared, repeats, min_sample_s))
        if on_shape is not None:
            on_shape(finished, BenchResult(list(records), list(agreement), list(skipped), _notes(), tuple(failed)))
    return BenchResult(records, agreement, skipped, _notes(), tuple(failed))


# A pause before every timed sample, so that no implementation's sample starts while the previous one's threads are
# still busy. PyTorch's OpenMP workers keep spinning for a while after a multi-threaded call returns: on the 2-core
# Intel Xeon (2026-11-29) the sample timed right after torch's 2-thread sample was 14-20% slower than the same
# compiled program timed elsewhere in the round (LSTM (8,256,8,32,8): 0.974 vs 0.854 ms forward, 3.45 vs 2.88 ms
# train), and a throwaway script (30 nn.LSTM calls on 2 threads, then 20 calls of a jitted rnn-jax LSTM) measured
# 0.978 ms a call with no pause, 0.831 after 5 ms, 0.814 after 50 ms and 0.831 with no torch before it. Before this
# pause the harness's fixed order put lower-bound right after torch (its bound read high) and a study's first
# implementation after torch on the next round.
SETTLE_S = 0.01

# Why each call fills its own sample (`interleaved_samples`): the first call after a pause runs slow (caches, the
# CPU's idle state). On the 2-core Intel Xeon (2026-11-29, rnn-jax's train step at (1,1000,1,32,1), 30 single calls
# each) a call took 0.44 ms right after another, 0.88 ms after 10 ms idle and 1.43 ms after 100 ms, against 0.53 ms
# a call back to back. The sampler used to repeat every call as often as the fastest one needed, or once when that
# made a sample over 10x ``min_sample_s``: a call 10x slower than the fastest (PyTorch's at B = 1; a long size
# timed beside a short one in a study) was then timed as a single cold call (the train step above read 2.0-2.7 ms
# beside a T = 2 step).
K = TypeVar("K")


def interleaved_samples(
    calls: Mapping[K, Callable[[], None]], repeats: int, min_sample_s: float
) -> dict[K, list[float]]:
    """``repeats`` timing samples in seconds per call of each of ``calls`` (key -> a function of no arguments that
    waits for its result), taken in turn (A B C A B C ...), each after a `SETTLE_S` pause.

    Each call is run twice first (a warm-up, then a timed call that sizes the samples): a sample repeats a call as
    often as it takes that call to fill ``min_sample_s`` (at least once, at most 1000 times; once when 0), so
    that short calls are not timed at the clock's resolution and no sample is one call just after the pause
    (a cold call, slower: the comment above).
    """
    counts = {}
    for key, fn in calls.items():
        fn()
        start = time.perf_counter()
        fn()
        first_call = time.perf_counter() - start
        counts[key] = min(1000, max(1, int(np.ceil(min_sample_s / max(first_call, 1e-7)))))
    samples: dict[K, list[float]] = {key: [] for key in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            count = counts[key]
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            for _ in range(count):
                fn()
            samples[key].append((time.perf_counter() - start) / count)
    return samples


def _time_mode(shape, mode, impls, prepared, repeats, min_sample_s) -> list[dict[str, Any]]:
    """Interleaved samples of every implementation's ``mode``; variants reported under the better one."""
    calls: dict[tuple[str, str], Callable[[], None]] = {}
    for impl in impls:
        if impl.name not in prepared:
            continue
        for variant in impl.variants or (impl.name,):
            key = f"{mode}@{variant}" if impl.variants else mode
            calls[impl.name, variant] = prepared[impl.name].run[key]
    if not calls:  # every implementation skipped (GPU-only ones on a CPU, say) or failed: reported as such
        return []
    samples = interleaved_samples(calls, repeats, min_sample_s)
    records = []
    for impl in impls:
        if impl.name not in prepared:
            continue
        variants = impl.variants or (impl.name,)
        best = min(variants, key=lambda v: statistics.median(samples[impl.name, v]))
        median, p10, p90 = percentiles(samples[impl.name, best])
        records.append(
            {
                "config": shape.to_json(),
                "impl": best,
                "mode": mode,
                "median_ms": median,
                "p10_ms": p10,
                "p90_ms": p90,
                "compile_s": float(prepared[impl.name].compile_s[mode]),
                "peak_mem_mb": float(prepared[impl.name].peak_mem_mb[mode]),
                "devices": impl.devices,
            }
        )
    return records


def _notes() -> dict[str, str]:
    device = jax.devices()[0]
    notes = {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "jax": jax.__version__,
        "cpu_count": str(os.cpu_count()),
    }
    try:
        import torch

        notes["torch"] = torch.__version__
    except ImportError:
        notes["torch"] = "not installed"
    return notes


# ------------------------------------------------------------------ the table


def format_table(result: BenchResult, fast: str | None = None, bound: str = "lower-bound") -> str:
    """The records as a text table, with the fast path's time over each implementation's and each over the bound.

    ``fast/this`` below 1 means ``fast`` (default: rnn-jax-fast if timed, else the first implementation)
    is faster than ``this``; ``/bound`` is the time as a multiple of the measured lower bound (the lowest of
    ``bound`` and its ``-Ndev`` variants: the floor on this machine, whichever way it is reached).
    """
    timed = [r["impl"] for r in result.records]
    if fast is None:
        fast = "rnn-jax-fast" if "rnn-jax-fast" in timed or not timed else _family(timed[0])
    lines = [
        "backend {backend} ({device}), {cpu_count} CPUs, jax {jax}, torch {torch}".format(**result.notes),
        f"fast/this: the median time of {fast} over this one's",
        "",
        f"{'cell':<6}{'B,T,D,H,O':<20}{'mode':<9}{'impl':<{IMPL_WIDTH}}{'median ms':>10}{'p10-p90 ms':>18}"
        f"{'steps/s':>12}{'compile s':>10}{'peak MB':>9}{'fast/this':>10}{'/bound':>8}",
    ]
    by_key: dict[tuple, dict[str, dict]] = {}
    for r in result.records:
        c = r["config"]
        by_key.setdefault((tuple(c[k] for k in CONFIG_KEYS), r["mode"]), {})[_family(r["impl"])] = r
    for (config, mode), group in by_key.items():
        cell, b, t, d, h, o = config
        fast_ms = group[fast]["median_ms"] if fast in group else float("nan")
        bounds = [r["median_ms"] for name, r in group.items() if name == bound or name.startswith(f"{bound}-")]
        bound_ms = min(bounds, default=float("nan"))
        for r in group.values():
            ms = r["median_ms"]
            spread = f"{r['p10_ms']:.3f}-{r['p90_ms']:.3f}"
            lines.append(
                f"{cell:<6}{f'{b},{t},{d},{h},{o}':<20}{mode:<9}{r['impl']:<{IMPL_WIDTH}}{ms:>10.3f}"
                f"{spread:>18}{b * t / ms * 1e3:>12.4g}{r['compile_s']:>10.2f}"
                f"{r['peak_mem_mb']:>9.1f}{fast_ms / ms:>10.2f}{ms / bound_ms:>8.2f}"
            )
    lines.append("")
    reference = result.agreement[0].impl if result.agreement else "the first implementation"
    lines.append(f"agreement of the first step with {reference} (loss and gradients, relative):")
    for a in result.agreement:
        verdict = "ok" if a.agrees else "DISAGREES"
        lines.append(
            f"  {a.shape.cell} {a.shape.B},{a.shape.T},{a.shape.D},{a.shape.H},{a.shape.O}  {a.impl:<{IMPL_WIDTH}}"
            f"loss {a.loss:.6g}  loss err {a.loss_rel_err:.1e}  grad err {a.grad_rel_err:.1e}  {verdict}"
        )
    for shape, impl, reason in result.skipped:
        lines.append(f"  skipped {impl} on {shape.cell} {shape.B},{shape.T},{shape.D},{shape.H},{shape.O}: {reason}")
    for shape, impl, error in result.failed:
        lines.append(f"  FAILED {impl} on {shape.cell} {shape.B},{shape.T},{shape.D},{shape.H},{shape.O}: {error}")
    return "\n".join(lines)


class Goal(NamedTuple):
    """One of the speed goals (README, "Performance") as a run measured it: ``met`` is None when the run lacks
    the records it needs (a size, PyTorch, the bound), and ``measured`` then says which."""

    goal: str
    measured: str
    met: bool | None


GOAL_MID = (64, 256, 32, 128, 32)  # the size of the ratio goals
GOAL_BOUND_SIZES = (GOAL_MID, (1, 1000, 1, 32, 1))  # the sizes of the lower-bound goal
GOAL_MAX_COMPILE_S = 2.0


def speed_goals(records: Sequence[Mapping[str, Any]], fast: str = "rnn-jax-fast") -> list[Goal]:
    """Where a run's records put the speed goals: for the Elman network, at (64,256,32,128,32) a train step at most
    0.5x PyTorch's and 0.7x flax's, and within 1.3x of the lower bound there and at (1,1000,1,32,1) (the forward
    pass and the train step); for every cell in the records, at no size and mode slower than flax or PyTorch, and
    compile under 2 s. rnn-jax's time is the better of ``fast`` and its ``-Ndev`` rows (the step split over
    devices), PyTorch's the better thread count, the bound the lowest of ``lower-bound`` and its ``-Ndev`` rows, as
    in the table's ``/bound`` column."""
    times: dict[tuple, dict[str, float]] = {}
    compile_s: dict[str, float] = {}
    for r in records:
        name = _family(r["impl"])
        if name.startswith(f"{fast}-") and name.endswith("dev"):
            name = fast
        elif name.startswith("lower-bound"):
            name = "lower-bound"
        c = r["config"]
        key = (c["cell"], tuple(c[k] for k in CONFIG_KEYS[1:]), r["mode"])
        group = times.setdefault(key, {})
        group[name] = min(group.get(name, float("inf")), r["median_ms"])
        if name == fast:
            compile_s[c["cell"]] = max(compile_s.get(c["cell"], 0.0), r["compile_s"])

    def ratio(cell, size, mode, other):
        group = times.get((cell, size, mode), {})
        return group[fast] / group[other] if fast in group and other in group else None

    def sized(size):
        return ",".join(map(str, size))

    def at_most(goal, r, limit):
        return Goal(goal, f"{r:.2f}x" if r is not None else "not measured", None if r is None else r <= limit)

    goals = []
    for cell in sorted({key[0] for key in times}):
        if cell == "elman":  # the ratio and bound goals are the Elman network's (nn.RNN's); the others, every cell's
            for other, limit in (("torch", 0.5), ("flax", 0.7)):
                r = ratio(cell, GOAL_MID, "train", other)
                goals.append(at_most(f"{cell} train at ({sized(GOAL_MID)}) <= {limit}x {other}", r, limit))
            for size in GOAL_BOUND_SIZES:
                for mode in MODES:
                    r = ratio(cell, size, mode, "lower-bound")
                    goals.append(at_most(f"{cell} {mode} at ({sized(size)}) <= 1.3x the lower bound", r, 1.3))
        against = [
            (f"{mode} ({sized(size)}) {other}", r)
            for (c, size, mode) in times
            for other in ("flax", "torch")
            if c == cell and (r := ratio(cell, size, mode, other)) is not None
        ]
        slower = "; ".join(f"{where} {r:.2f}x" for where, r in against if r > 1)
        measured = slower or ("nowhere slower" if against else "not measured")
        goals.append(Goal(f"{cell} never slower than flax or torch", measured, not slower if against else None))
        most = compile_s.get(cell)
        goals.append(
            Goal(
                f"{cell} {fast} compile < {GOAL_MAX_COMPILE_S:g} s",
                f"at most {most:.2f} s" if most is not None else "not measured",
                None if most is None else most < GOAL_MAX_COMPILE_S,
            )
        )
    return goals


def format_goals(goals: Sequence[Goal]) -> str:
    """The goals as lines: met, NOT MET, or n/a (what the run did not measure)."""
    verdicts = {True: "met", False: "NOT MET", None: "n/a"}
    lines = ["speed goals (README, Performance) in this run:"]
    lines += [f"  {verdicts[g.met]:<8}{g.goal}: {g.measured}" for g in goals]
    return "\n".join(lines)


IMPL_WIDTH = 30  # the table's implementation column: the longest name, rnn-jax-fast-graphs-unrolled, and a space


def _family(impl: str) -> str:
    return "torch" if impl.startswith("torch-") else impl


def shapes_for(preset: str | None, configs: Sequence[str], cell: str) -> list[Shape]:
    """The shapes of a preset, then those of ``--config B,T,D,H,O`` strings."""
    shapes = []
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
        shapes += [Shape(cell, *sizes) for sizes in PRESETS[preset]]
    for text in configs:
        try:
            sizes = tuple(int(v) for v in text.split(","))
        except ValueError:
            sizes = ()
        if len(sizes) != 5 or min(sizes) < 1:
            raise ValueError(f"config: expected five positive integers B,T,D,H,O, got {text!r}")
        shapes.append(Shape(cell, *sizes))
    if not shapes:
        raise ValueError("config: give a --preset or at least one --config B,T,D,H,O")
    return shapes


def validate_records(records: Any) -> None:
    """Raises ValueError unless ``records`` is a list of records exactly as the JSON schema of the harness says."""
    if not isinstance(records, list):
        raise ValueError(f"records: expected a list, got {type(records).__name__}")
    for r in records:
        required = sorted(k for k in RECORD_KEYS if k not in OPTIONAL_KEYS)
        if not isinstance(r, dict) or sorted(k for k in r if k not in OPTIONAL_KEYS) != required:
            raise ValueError(f"record: expected keys {RECORD_KEYS} ({OPTIONAL_KEYS} optional), got {r!r}")
        devices = r.get("devices", 1)
        if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
            raise ValueError(f"record: devices must be a positive integer, got {devices!r}")
        if tuple(sorted(r["config"])) != tuple(sorted(CONFIG_KEYS)) or not isinstance(r["config"]["cell"], str):
            raise ValueError(f"record config: expected keys {CONFIG_KEYS}, got {r['config']!r}")
        if not all(isinstance(r["config"][k], int) and r["config"][k] >= 1 for k in CONFIG_KEYS[1:]):
            raise ValueError(f"record config: sizes must be positive integers, got {r['config']!r}")
        if not isinstance(r["impl"], str) or r["mode"] not in MODES:
            raise ValueError(f"record: bad impl or mode in {r!r}")
        for k in ("median_ms", "p10_ms", "p90_ms", "compile_s", "peak_mem_mb"):
            if not isinstance(r[k], float):
                raise ValueError(f"record: {k} must be a number, got {r[k]!r}")
        if not r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]:
            raise ValueError(f"record: expected p10 <= median <= p90, got {r!r}")


__all__ = [
    "MATMUL_PRECISION",
    "PRESETS",
    "Agreement",
    "BenchResult",
    "Implementation",
    "Prepared",
    "Problem",
    "Shape",
    "Unavailable",
    "check_agreement",
    "default_implementations",
    "flax_implementation",
    "format_table",
    "long_implementations",
    "lower_bound_implementation",
    "percentiles",
    "preset_implementations",
    "rnn_jax_implementation",
    "scaling_implementations",
    "run",
    "shapes_for",
    "torch_implementation",
    "validate_records",
]
