"""Configuration: one frozen dataclass per concern (model, task, optimiser, run).

Every field carries its help text in ``metadata["help"]``; the command line is generated from
these dataclasses (`rnn_jax.cli`), so a new field is a new option with no second copy to keep.
Field names are unique across the four classes, so each option is a plain ``--name``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Union, get_args, get_origin, get_type_hints


def check_choices(section: object) -> None:
    """Raises ValueError, naming the field, when a field of the dataclass ``section`` typed ``Literal[...]`` (or
    ``Literal[...] | None``) holds none of its choices, and TypeError when a field typed ``bool`` holds something
    else: the command line refuses those, a config built in Python or read from a file did not (an unknown
    ``precision`` failed as a KeyError, an unknown gradient-check ``lengths`` ran as "full", ``bidirectional="no"``
    built a bidirectional network)."""
    hints = get_type_hints(type(section))
    for f in dataclasses.fields(section):
        kind, choices = hints[f.name], ()
        if kind is bool and not isinstance(getattr(section, f.name), bool):
            raise TypeError(f"{f.name}: expected True or False, got {getattr(section, f.name)!r}")
        if get_origin(kind) is Literal:
            choices = get_args(kind)
        elif get_origin(kind) is Union and any(get_origin(a) is Literal for a in get_args(kind)):
            choices = tuple(c for a in get_args(kind) for c in (get_args(a) if get_origin(a) is Literal else (None,)))
        value = getattr(section, f.name)
        if choices and value not in choices:
            raise ValueError(f"{f.name}: expected one of {[c for c in choices if c is not None]}, got {value!r}")


def _help(text: str, metavar: str | None = None, **kwargs):
    metadata = {"help": text} if metavar is None else {"help": text, "metavar": metavar}
    return field(metadata=metadata, **kwargs)


# ModelConfig's fields that select rnn_jax.deep (any of them away from its default)
DEEP_OPTIONS = (
    "layers", "bidirectional", "residual", "dropout", "recurrent_dropout", "variational_dropout", "learn_initial_state",
)  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """Which recurrent network, its sizes and its initialisation."""

    model: Literal["elman", "lstm", "gru"] = _help(
        "the recurrent cell: elman, lstm (with forget gate) or gru", default="elman"
    )
    hidden: int = _help("state size H", default=64)
    activation: Literal["tanh", "sigmoid", "relu", "identity"] = _help("the state non-linearity phi", default="tanh")
    input_init: Literal["glorot_uniform", "glorot_normal", "lecun_uniform", "lecun_normal", "orthogonal"] = _help(
        "initialiser of W_x and W_y", default="glorot_uniform"
    )
    recurrent_init: Literal[
        "orthogonal", "identity", "glorot_uniform", "glorot_normal", "lecun_uniform", "lecun_normal"
    ] = _help("initialiser of W_s ('identity' with relu is the IRNN)", default="orthogonal")
    recurrent_scale: float = _help("factor applied to W_s after drawing it", default=1.0)
    spectral_radius: float | None = _help("rescale W_s to this spectral radius", default=None)
    dtype: Literal["float32", "float64", "bfloat16"] = _help("parameter and compute dtype", default="float32")
    unroll: int = _help("time steps per scan loop iteration (lax.scan's unroll)", default=1)
    backward: Literal["fast", "autodiff", "bptt", "fused"] = _help(
        "gradients by jax.grad through the scan, by the hand-derived BPTT equations (custom VJP; elman, lstm and gru), "
        "'fused': the same with both recursions through time as Pallas kernels (rnn_jax.fused; compiled on a GPU "
        "for H <= 128 (elman) or 64 (lstm, gru), interpreted slowly elsewhere), or 'fast': the fastest "
        "measured (bptt for elman, except B = 1 on a GPU; bptt for lstm on a CPU with B > 1; autodiff otherwise)",
        default="fast",
    )
    layers: int = _help("stacked recurrent layers L (rnn_jax.deep; 1: the single-layer network)", default=1)
    bidirectional: bool = _help(
        "run every layer in both directions (the backward one from each sequence's own end) and concatenate them",
        default=False,
    )
    residual: bool = _help("add each layer's input to its output, for layers 2..L (Wu et al. 2016)", default=False)
    dropout: float = _help(
        "dropout rate in [0, 1) on every layer's input and on the top layer's output, in training only "
        "(Zaremba et al. 2014)",
        default=0.0,
    )
    recurrent_dropout: float = _help(
        "dropout rate in [0, 1) on h_{t-1} in the recurrent product, one mask per sequence for all steps "
        "(Gal & Ghahramani 2016)",
        default=0.0,
    )
    variational_dropout: bool = _help(
        "--dropout uses one mask per sequence for all time steps instead of a fresh one per step", default=False
    )
    learn_initial_state: bool = _help(
        "make the initial state s_0 of every layer and direction a trained parameter (zeros otherwise)", default=False
    )

    remat: str | None = _help(
        "rematerialise the backward pass (gradient checkpointing): keep the state every k steps and recompute "
        "the steps between them, memory O(T/k + k) instead of O(T): an integer k, or 'sqrt' (k = ceil(sqrt T)); "
        "uses the autodiff backward pass (None: keep everything)",
        metavar="K|sqrt",
        default=None,
    )
    precision: Literal["float32", "bfloat16"] = _help(
        "bfloat16: mixed precision, the unroll and its backward pass in bfloat16 while the parameters, optimizer "
        "state, loss and gradient sums stay float32 (with --dtype float32; uses the autodiff backward pass)",
        default="float32",
    )
    projections: Literal["auto", "in_step", "hoisted", "hoisted_readout"] = _help(
        "where the products that do not depend on the state run: hoisted (x_t W_x for all T steps as one product "
        "before the scan, the read-out as one after it, as cuDNN does), in_step (inside every scan step), "
        "hoisted_readout (x_t W_x in the step, the read-out after the scan; single-layer only), or auto: hoisted on "
        "GPU/TPU; on CPU with batch <= 8 hoisted for an Elman network with D or O > 1, hoisted_readout for LSTM/GRU "
        "and for Elman at batch 1 with D = 1, else in step; as measured (a deep network's auto: hoisted on "
        "GPU/TPU, in the step on CPU; hoisted forms not with remat/precision)",
        default="auto",
    )

    @property
    def is_deep(self) -> bool:
        """Whether any option of `rnn_jax.deep` is set; False runs the single-layer network unchanged."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        return any(getattr(self, name) != fields[name].default for name in DEEP_OPTIONS)


@dataclass(frozen=True)
class TaskConfig:
    """Which task, and the shape of its batches."""

    task: Literal["adding", "xor", "temporal_order", "numbers", "shakespeare", "sunspots", "japanese-vowels"] = _help(
        "adding: sum of two marked numbers (many-to-one); xor: Elman's temporal XOR (next-bit prediction); "
        "temporal_order: the order of two symbols A/B among distractors (4 classes, Pascanu et al. 2013); "
        "shakespeare: character-level language model (needs rnn-jax[data]); sunspots: one-month-ahead forecasting; "
        "japanese-vowels: speaker classification from variable-length utterances; numbers: spelled-out English "
        "numbers to digits with an encoder-decoder (sequence to sequence, exact match on held-out numbers)",
        default="adding",
    )
    seq_len: int = _help("sequence length T", default=50)
    min_len: int | None = _help(
        "adding only: draw each sequence's length uniformly from [min_len, seq_len] (padded batches)", default=None
    )
    batch_size: int = _help("sequences per training batch B", default=64)
    max_value: int = _help("numbers only: numbers are drawn from [0, max_value] (at most 999999)", default=999)
    reverse_source: bool = _help(
        "numbers only: feed each number's name to the encoder last word first (Sutskever et al. 2014)", default=False
    )


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser, built as one ``optax.chain(clip, optimizer)`` by `rnn_jax.optim.make_optimizer`."""

    optimizer: Literal["sgd", "adam", "adagrad", "rmsprop"] = _help("the update rule", default="adam")
    learning_rate: float = _help("peak learning rate", default=1e-3)
    momentum: float = _help("sgd only: heavy-ball momentum (0 = plain SGD)", default=0.9)
    schedule: Literal["constant", "cosine", "warmup_cosine", "exponential"] = _help(
        "learning-rate schedule over the run (optax.schedules)", default="constant"
    )
    warmup_steps: int = _help("warmup_cosine only: linear warm-up steps", default=0)
    decay_rate: float = _help("exponential only: factor reached at the last step", default=0.1)
    clip: Literal["none", "value", "global_norm"] = _help(
        "gradient clipping: elementwise to [-t, t] (min-char-rnn), or by global norm (Pascanu et al. 2013)",
        default="global_norm",
    )
    clip_threshold: float = _help("clipping threshold t", default=1.0)


@dataclass(frozen=True)
class RunConfig:
    """How long to train, how often to report, and where results go."""

    steps: int = _help("training steps (one batch each)", default=10000)
    seed: int = _help("seed of the initial parameters and of every batch", default=0)
    eval_every: int = _help("evaluate on held-out batches every N steps (and at the end)", default=1000)
    eval_batches: int = _help("held-out batches per evaluation", default=8)
    log_every: int = _help("write a metrics line every N steps", default=50)
    out: str | None = _help(
        "directory for metrics.jsonl, summary.json and the loss curve (None: runs/TASK-DATE-TIME)",
        metavar="DIR",
        default=None,
    )
    progress: bool = _help("show a progress bar", default=True)
    tbptt_k1: int | None = _help(
        "truncated BPTT over one long stream per sequence (xor): update every k1 steps (None: full BPTT per batch)",
        default=None,
    )
    tbptt_k2: int | None = _help(
        "truncated BPTT: gradients flow back at most k2 >= k1 steps (default: k2 = k1)", default=None
    )
    tbptt_reset_every: int | None = _help(
        "truncated BPTT: reset the carried state to s_0 every N updates, so that the net also learns to start "
        "from s_0 (without it, a net trained on one endless stream can fail from the zero state it is "
        "evaluated and sampled from)",
        default=None,
    )
    checkpoint_every: int = _help(
        "save the whole training position to OUT/checkpoints every N steps and always at the last step "
        "(0: only at the last step)",
        default=1000,
    )
    keep_checkpoints: int = _help("keep the newest N checkpoints", default=3)
    resume: bool = _help(
        "continue from the newest checkpoint in --out (from step 0 when there is none), to the same result as a "
        "run that was never stopped; with the constant learning-rate schedule --steps may differ from the "
        "stopped run's (a finished run continues to the result of a run started with the new --steps)",
        default=False,
    )
    tensorboard: bool = _help(
        "also write the metrics as TensorBoard scalars beside metrics.jsonl (needs tensorboardX)", default=False
    )
    devices: int | None = _help(
        "data parallel: split each batch over the first N devices, parameters replicated (None: all devices). "
        "On a CPU, N makes N CPU devices (XLA runs a step's small products on one core each; one device per core "
        "is the useful most)",
        metavar="N",
        default=None,
    )


@dataclass(frozen=True)
class Config:
    """Everything a training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        """A JSON-ready nested dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        """The inverse of `to_dict` (as stored in summary.json).

        Raises:
          ValueError: when a section or field is unknown (a config from another version).
        """
        sections = {}
        for f in dataclasses.fields(cls):
            try:
                sections[f.name] = f.default_factory()
                sections[f.name] = type(sections[f.name])(**data.get(f.name, {}))
            except TypeError as error:
                raise ValueError(f"config: the stored {f.name!r} section does not fit this rnn-jax ({error})") from None
        return cls(**sections)


@dataclass(frozen=True)
class GradcheckConfig:
    """What `rnn_jax.gradcheck.check_gradients` compares, and on which model."""

    model: Literal["elman", "lstm", "gru"] = _help(
        "the recurrent cell (the custom-VJP and fused checks exist for every cell; the hand-derived BPTT "
        "equations without jax.grad for elman)",
        default="elman",
    )
    activation: Literal["tanh", "sigmoid", "relu", "identity", "random"] = _help(
        "phi; 'random' draws one per trial", default="random"
    )
    input_size: int = _help("D", default=3)
    hidden: int = _help("H", default=5)
    output_size: int = _help("O", default=2)
    seq_len: int = _help("T", default=6)
    batch_size: int = _help("B", default=3)
    lengths: Literal["full", "variable", "random"] = _help(
        "'variable': lengths drawn from [0, T] (padded batch); 'random': either, per trial", default="random"
    )
    loss: Literal["squared_error", "cross_entropy", "random"] = _help("the loss; 'random' draws one", default="random")
    reduction: Literal["sum", "mean"] = _help("the loss's reduction", default="mean")
    tbptt_k1: int | None = _help("also check TBPTT(k1, k2): update every k1 steps", default=None)
    tbptt_k2: int | None = _help("... with gradients flowing back at most k2 steps (k1 <= k2)", default=None)
    trials: int = _help(
        "configurations to check; with more than 1, each trial draws D, H, O, T, B from [1, the given value] "
        "(T from [k2, ...] with TBPTT) and every 'random' choice; the report gives the worst case",
        default=1,
    )
    seed: int = _help("seed of the parameters, data and trials", default=0)
    layers: int = _help("check a deep network (rnn_jax.deep) of this many stacked layers", default=1)
    bidirectional: bool = _help("check a bidirectional network (rnn_jax.deep)", default=False)
    residual: bool = _help("with residual connections between layers 2..L (rnn_jax.deep)", default=False)
    learn_initial_state: bool = _help("with a learnable (and checked) initial state (rnn_jax.deep)", default=False)
    max_entries: int = _help(
        "finite differences on every entry of a parameter up to this size, random directions beyond", default=256
    )
    directions: int = _help("random directions for forward mode and for large parameters", default=8)
    fd_step: float = _help("central-difference step h", default=1e-5)


@dataclass(frozen=True)
class BenchConfig:
    """What `rnn_jax.bench.run` times: the problem sizes, the cell and the number of repeats."""

    preset: Literal["quick", "standard", "gpu", "long"] | None = _help(
        "quick: tiny sizes for the tests; standard: the five issue sizes on a CPU; gpu: those and "
        "(256,512,128,512,128) (294 s in all with the default implementations on one H200); long: "
        "T = 1000, 10000, 100000 at B=4, D=1, H=32, O=1, with and without remat (rnn-jax only). Default: standard, "
        "unless --config is given",
        default=None,
    )
    config: tuple[str, ...] = _help("another problem size B,T,D,H,O (repeatable)", metavar="B,T,D,H,O", default=())
    cell: Literal["elman", "lstm", "gru"] = _help(
        "the recurrent cell (flax: SimpleCell, OptimizedLSTMCell, GRUCell; torch: nn.RNN, nn.LSTM, nn.GRU)",
        default="elman",
    )
    repeats: int | None = _help("timed samples per implementation and mode (default: the preset's)", default=None)
    seed: int = _help("seed of the shared parameters and data", default=0)
    cpu_devices: int | None = _help(
        "CPU devices to make (default: one per core, at most 8); with two or more the harness adds the fast path data "
        "parallel over 2, 4, 8, ... of them, powers of two up to that count (rnn-jax-fast-Ndev; others by --impl), "
        "and the lower bound so split (lower-bound-Ndev): XLA runs a step's small products on one core each, so this "
        "is how rnn-jax uses the others. XLA_FLAGS's "
        "--xla_force_host_platform_device_count, when set, wins",
        metavar="N",
        default=None,
    )
    impl: tuple[str, ...] = _help(
        "time only this implementation (repeatable; the first is the agreement check's reference): "
        "rnn-jax-{autodiff,fast}[-in-step|-hoisted|-hoisted-readout] (the input/read-out projections inside each "
        "scan step, hoisted out of it, or only the read-out hoisted; no suffix: by backend and size), rnn-jax-bptt "
        "(the hand-derived custom VJP), rnn-jax-bf16, "
        "rnn-jax-remat-{100,sqrt}, rnn-jax-fused[-per-step|-4warps] (GPU), rnn-jax-fast-graphs[-unrolled] and "
        "lower-bound-graphs (GPU: the scan's loop as CUDA graphs, XLA's command buffers), flax, torch, lower-bound, "
        "and with N devices rnn-jax-fast-Ndev, lower-bound-Ndev. Default: the preset's",
        metavar="NAME",
        default=(),
    )
