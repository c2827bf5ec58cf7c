"""The command line: ``rnn-jax train | gradcheck | bench``.

The options are generated from the config dataclasses (`rnn_jax.config`): each field is a
``--field-name`` option with the field's type, default, choices and help text. The CLI only
parses, wires up output files and printing, and calls the library.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import types
import typing
from typing import Any, Literal

from rnn_jax.config import BenchConfig, Config, GradcheckConfig, ModelConfig, OptimConfig, RunConfig, TaskConfig


def _optional_of(hint: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def _parser_for(hint: Any, optional: bool):
    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        return hint(text)

    parse.__name__ = getattr(hint, "__name__", "value")
    return parse


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Adds one ``--name`` option per field of the dataclass ``cls``."""
    title = cls.__name__.removesuffix("Config").lower() + " options"
    group = parser.add_argument_group(title, (cls.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        inner = _optional_of(hint)
        optional = inner is not None
        hint = inner if optional else hint
        if typing.get_origin(hint) is tuple:  # a repeatable option
            group.add_argument(
                flag,
                dest=f.name,
                action="append",
                type=typing.get_args(hint)[0],
                default=None,
                metavar=f.metadata.get("metavar", "VALUE"),
                help=help_text,
            )
        elif hint is bool:
            group.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=help_text
            )
        elif typing.get_origin(hint) is Literal:
            group.add_argument(flag, dest=f.name, choices=typing.get_args(hint), default=f.default, help=help_text)
        else:
            group.add_argument(
                flag,
                dest=f.name,
                type=_parser_for(hint, optional),
                default=f.default,
                metavar=f.metadata.get("metavar", hint.__name__.upper()),
                help=help_text,
            )


def _build(cls, args: argparse.Namespace):
    values = dict(vars(args))
    for f in dataclasses.fields(cls):
        if isinstance(f.default, tuple):  # a repeatable option: argparse's list (or None when never given)
            values[f.name] = tuple(values[f.name] or f.default)
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})


def config_from_args(args: argparse.Namespace) -> Config:
    """The `Config` the parsed options describe."""
    return Config(
        model=_build(ModelConfig, args),
        task=_build(TaskConfig, args),
        optim=_build(OptimConfig, args),
        run=_build(RunConfig, args),
    )


def _gradcheck(args: argparse.Namespace) -> int:
    from rnn_jax import gradcheck

    config = _build(GradcheckConfig, args)
    if args.json is not None:
        _output_file("--json", args.json)
    report = gradcheck.check_gradients(config)
    print(gradcheck.format_table(report))
    if args.explain:
        print(gradcheck.explain(report))
    if args.json:
        _write_json_atomically(args.json, report.to_json())
        print(f"wrote {args.json}")
    return 0 if report.passed else 1


def _bench(args: argparse.Namespace) -> int:
    from rnn_jax import _checks, bench, distributed, plotting

    config = _build(BenchConfig, args)
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            _output_file(option, path)  # now, not after the first shape's minutes of timing
    if args.plot is not None:
        plotting.check_figure_path("--plot", args.plot)
    # before JAX starts; at most 8 by default, so a many-core machine adds 3 device counts, not 6
    if config.cpu_devices is not None:  # 0 fell back to the default and -1 was reported as "count"
        _checks.positive_int("--cpu-devices", config.cpu_devices)
    distributed.present_cpu_devices(config.cpu_devices or min(distributed.cpu_cores(), 8))
    preset = config.preset or (None if config.config else "standard")
    shapes = bench.shapes_for(preset, config.config, config.cell)
    repeats = config.repeats if config.repeats is not None else bench.PRESET_REPEATS.get(preset, 9)
    impls = bench.named_implementations(config.impl) if config.impl else bench.preset_implementations(preset)
    start = time.perf_counter()

    def on_shape(finished: int, partial: bench.BenchResult) -> None:
        """After each shape: a progress line, and the JSON so far (a run cut short keeps what it finished)."""
        shape = shapes[finished - 1]
        print(
            f"bench: {finished}/{len(shapes)} {shape.cell} {shape.B},{shape.T},{shape.D},{shape.H},{shape.O} done "
            f"({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        if args.json:
            _write_json_atomically(args.json, partial.records)

    result = bench.run(
        shapes,
        repeats=repeats,
        seed=config.seed,
        implementations=impls,
        on_shape=on_shape,
    )
    print(bench.format_table(result))
    print()
    print(bench.format_goals(bench.speed_goals(result.records)))
    if args.json:
        _write_json_atomically(args.json, result.records)
        print(f"wrote {args.json}")
    if args.plot and result.records:
        plotting.benchmark(result.records, args.plot)
        print(f"wrote {args.plot}")
    disagreeing = [a.impl for a in result.agreement if not a.agrees]
    if disagreeing:
        print(f"error: these implementations computed a different first step: {sorted(set(disagreeing))}")
    if result.failed:
        print(f"error: these implementations failed (the others were timed): {sorted({f[1] for f in result.failed})}")
    return 1 if disagreeing or result.failed else 0


def _output_file(option: str, path: str) -> None:
    """Refuses, before any work, a ``path`` that ``option`` could not write when the work is done: a directory, or
    a file whose directory cannot be made (a ValueError naming the option). Makes that directory."""
    if not path:
        raise ValueError(f"{option}: expected a path, got an empty string")
    if os.path.isdir(path):
        raise ValueError(f"{option}: {path!r} is a directory; expected the path of a file to write")
    output_directory(option, os.path.dirname(os.path.abspath(path)))
    probe = path + ".tmp"  # what the writes go through (`_write_json_atomically`); a place may refuse files
    try:
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"{option}: cannot write {path!r} ({error.strerror or error})") from error


def output_directory(option: str, path: str) -> None:
    """Makes the directory ``path`` for ``option``, or refuses it (a ValueError naming the option and the reason):
    what the command line and the studies (`experiments`) check before any work."""
    if not path:
        raise ValueError(f"{option}: expected a path, got an empty string")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option}: {path!r} exists and is not a directory; expected a directory to write into")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{option}: cannot make the directory {path!r} ({error.strerror or error})") from error
    try:  # a place may refuse files in a directory that exists (/proc, a read-only mount): try one
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise ValueError(f"{option}: cannot write into the directory {path!r} ({error.strerror or error})") from error


def _write_json_atomically(path: str, records: Any) -> None:
    """Writes ``records`` (JSON data) to ``path`` through a temporary file and a rename, so that a reader never sees
    half a file."""
    with open(path + ".tmp", "w") as f:
        json.dump(records, f, indent=2)
    os.replace(path + ".tmp", path)


# Names in the library's messages that no option has, and the option (its dest) that sets what they name: the
# unroll's compute dtype is what --precision sets (None there: the parameters' dtype, --precision's default),
# truncated BPTT's own checks (`rnn_jax.bptt.check_truncation`) say k1 and k2, and the text a task encodes is
# sample's --prime.
_ALIASES = {"compute_dtype": "precision", "k1": "tbptt_k1", "k2": "tbptt_k2", "text": "prime"}
# a dtype as Python prints it (jnp.bfloat16, jnp.dtype("bfloat16"), np.dtype("float32")): an option takes its name
_DTYPE_REPR = re.compile(r"<class '(?:jax\.numpy|numpy)\.(\w+)'>|\bdtype\('?(\w+)'?\)")


def _as_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with the config fields it names written as ``parser``'s options (``learning_rate`` ->
    ``--learning-rate``), so that a command-line user reads what to type.

    The library names the field it refuses first (``"steps: expected ..."``, ``"k1, k2: ..."``), and may name
    other fields after it (``"... got optimizer 'adam'; drop momentum or change optimizer"``). A field named
    first, a field with an underscore, one followed by a quoted value or a comparison, one after "drop",
    "change", "needs" or "with", and one in a parenthesised list become options; a name that is also an English
    word stays a word elsewhere ("the numbers task's sequences"). A library name that no option has (`_ALIASES`)
    becomes the option that sets it, its ``=None`` that option's default, and a dtype's repr its name.
    """
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help"}
    defaults = {a.dest: a.default for a in parser._actions if a.dest in flags}
    aliases = {alias: dest for alias, dest in _ALIASES.items() if dest in flags and alias not in flags}
    flags |= {alias: flags[dest] for alias, dest in aliases.items()}
    message = _DTYPE_REPR.sub(lambda m: repr(m.group(1) or m.group(2)), message)
    for alias, dest in aliases.items():  # the library's None is the option's default ("compute_dtype=None")
        message = re.sub(rf"(?<![\w'./-]){alias}=None\b", f"{alias}={defaults[dest]!r}", message)
    head, colon, body = message.partition(": ")
    names = [name.strip() for name in head.split(",")]
    if colon and all(name in flags for name in names):
        message = ", ".join(flags[name] for name in names) + colon + body
        offset = len(message) - len(body)
    else:
        offset = 0
    pattern = re.compile(
        r"(?<![\w'./-])(" + "|".join(sorted(map(re.escape, flags), key=len, reverse=True)) + r")(?![\w/-])"
    )

    def as_flag(match: re.Match) -> str:
        name, before, after = match.group(1), match.string[: match.start()], match.string[match.end() :]
        named = (
            "_" in name
            or after.startswith((" '", " >", " <", " =", "="))
            or before.endswith(("drop ", "change ", "needs ", "with "))
            or (before.endswith(("(", ", ")) and after.startswith((", ", ")")))  # a list of options
        )
        return flags[name] if named and name not in ("k1", "k2") else name

    return message[:offset] + pattern.sub(as_flag, message[offset:])


def _train(args: argparse.Namespace) -> int:
    import jax

    from rnn_jax import distributed

    config = config_from_args(args)
    if config.run.devices is not None:
        _check_devices(config)
        if config.run.devices > 1:
            distributed.present_cpu_devices(config.run.devices)  # before JAX starts; make_mesh checks the count
    if config.model.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if config.run.resume and config.run.out is None:
        raise ValueError("--resume: needs --out DIR, the directory of the run to continue")
    out = config.run.out
    if out is None:  # an empty --out is refused below, not taken for this default
        out = os.path.join("runs", f"{config.task.task}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}")
    made = not os.path.exists(out)
    output_directory("--out", out)
    from rnn_jax import tasks
    from rnn_jax.checkpoint import CheckpointError
    from rnn_jax.train import TrainingDiverged, TrainingInterrupted, check_config, train_and_evaluate

    if config.run.resume:
        _quiet_abandoned_reads()
    try:
        check_config(config)  # the header shows only values that passed their checks
        print(
            f"rnn-jax train: {config.model.model} (H={config.model.hidden}, {config.model.activation}) on "
            f"{config.task.task} ({tasks.describe(config.task)}), "
            f"{config.optim.optimizer} lr={config.optim.learning_rate}, clip={config.optim.clip}, "
            f"{config.run.steps} steps, seed {config.run.seed}, backend {jax.default_backend()}"
        )
        summary = train_and_evaluate(config, out)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        print(f"metrics so far: {os.path.join(out, 'metrics.jsonl')}", file=sys.stderr)
        return 1
    except TrainingInterrupted as error:
        print(f"\nrnn-jax train: {error}; metrics so far in {os.path.join(out, 'metrics.jsonl')}", file=sys.stderr)
        print(f"continue with: rnn-jax train {_resume_arguments(args.argv, out)}", file=sys.stderr)
        return 128 + error.signal_number  # the shell's convention for a run stopped by a signal
    except (CheckpointError, ImportError) as error:
        if made:
            _remove_if_empty(out)  # a refused run leaves no empty run directory behind
        print(f"rnn-jax train: error: {_as_flags(str(error), args.command_parser)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError):
        if made:
            _remove_if_empty(out)
        raise  # `main` prints it
    if summary.get("resumed_from_step") == 0:
        print(f"--resume: no checkpoint in {out}, so the run started from step 0")
    elif "resumed_from_step" in summary:
        print(f"resumed from the checkpoint of step {summary['resumed_from_step']} in {out}")
    from rnn_jax import report

    summary = report.finish(config, summary, out)
    _print_summary(summary)
    if "sample" in summary:
        print(f"\nsample (temperature 0.8):\n{summary['sample']}")
    files = ["metrics.jsonl", "summary.json", "loss_curve.png", *summary.get("figures", [])]
    files += ["sample.txt"] if "sample" in summary else []
    print("wrote " + ", ".join(os.path.join(out, name) for name in files))
    return 0


def _check_devices(config: Config) -> None:
    """Refuses a device count that the batch cannot be split over (`rnn_jax.distributed.check_batch_size`, which
    the run asks again of its mesh) before JAX makes that many CPU devices: making 100000 took over a minute."""
    from rnn_jax import _checks, distributed

    devices = _checks.positive_int("devices", config.run.devices)
    batch_size = _checks.positive_int("batch_size", config.task.batch_size)
    distributed.check_batch_size(batch_size, devices)


def _quiet_abandoned_reads() -> None:
    """Installed before a checkpoint is read (``--resume``, ``sample``). When one cannot be read (the error says so,
    in one line), the reads orbax had started beside the failed one are abandoned: each reports its own failure
    with a traceback when Python collects it, and TensorStore's reads still in flight report "Event loop is closed"
    when they finish after orbax closed its event loop. They say nothing the error did not, so those are dropped;
    any other unraisable exception is reported as before."""
    report = sys.unraisablehook
    if getattr(report, "quiets_abandoned_reads", False):
        return

    def hook(unraisable) -> None:
        code = getattr(unraisable.object, "cr_code", None)  # an orbax coroutine that was never awaited to its end
        abandoned = code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename
        late = unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
        if not (abandoned or late):
            report(unraisable)

    hook.quiets_abandoned_reads = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_drop_abandoned_read_futures)


def _drop_abandoned_read_futures(record: logging.LogRecord) -> bool:
    """A filter for the ``asyncio`` logger (with `_quiet_abandoned_reads`): an abandoned read's future that failed
    on the same damaged file is logged as "Future exception was never retrieved" when it is collected (seen once in
    a fresh-clone run of the flipped-bytes test); only those, with TensorStore's DATA_LOSS error, are dropped."""
    error = record.exc_info[1] if record.exc_info else None  # asyncio logs the future's exception as exc_info
    never_retrieved = record.getMessage().startswith("Future exception was never retrieved")
    return not (never_retrieved and "DATA_LOSS" in str(error))


def _remove_if_empty(path: str) -> None:
    """Removes the directory ``path`` when no file is below it (empty folders, such as an unused checkpoints/,
    may be)."""
    if not any(files for _, _, files in os.walk(path)):
        shutil.rmtree(path)


def _resume_arguments(argv: list[str], out: str) -> str:
    """``rnn-jax train``'s arguments ``argv`` with ``--resume`` and ``--out OUT`` (each once): what continues."""
    kept, skip = [], False
    for arg in argv[1:]:  # argv[0] is the command, "train"
        if skip or arg == "--resume":
            skip = False
            continue
        if arg == "--out":
            skip = True
            continue
        if not arg.startswith("--out="):
            kept.append(arg)
    return shlex.join([*kept, "--resume", "--out", out])


def _print_summary(summary: dict[str, Any]) -> None:
    print("\nresult")
    print(f"  final train loss   {summary['final_train']['loss']:.5g}")
    split = "validation" if "final_test" in summary else "eval"
    for prefix, results in ((split, summary["final_eval"]), ("test", summary.get("final_test", {}))):
        for name, value in results.items():
            base = summary["baseline"].get(name)
            note = f"   (trivial baseline {base:.4g})" if base is not None else ""
            print(f"  {prefix} {name:<18} {value:.5g}{note}")
    speed, compile_s = summary["steps_per_second"], summary["compile_s"]
    print(
        f"  speed              {'n/a' if speed is None else f'{speed:.1f}'} steps/s (compile "
        f"{'n/a' if compile_s is None else f'{compile_s:.2f}'} s, train {summary['train_seconds']:.1f} s)"
        + (" (one step: it is in the compile time)" if speed is None and compile_s is not None else "")
    )


def _unescape(option: str, text: str) -> str:
    """``text`` with its backslash escapes read (so that ``\\n`` on the command line is a newline) and every other
    character as typed (non-ASCII ones included), or a ValueError naming ``option``."""
    try:  # characters beyond Latin-1 become \\uXXXX escapes first, so that the decoding brings them back as typed
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as error:
        raise ValueError(f"{option}: cannot read the escape in {text!r} ({error.reason})") from None


def _sample(args: argparse.Namespace) -> int:
    import jax

    from rnn_jax import _checks, report, tasks
    from rnn_jax.checkpoint import CheckpointError
    from rnn_jax.train import load_trained, stored_summary

    _checks.positive_int("--length", args.length)
    _checks.positive_real("--temperature", args.temperature)
    seed = _checks.seed("--seed", args.seed)
    prime = _unescape("--prime", args.prime)
    stored = stored_summary(args.checkpoint) if os.path.isdir(args.checkpoint) else {}
    if stored.get("config", {}).get("model", {}).get("dtype") == "float64":
        jax.config.update("jax_enable_x64", True)  # as `rnn-jax train --dtype float64` ran it
    _quiet_abandoned_reads()
    try:
        config, params = load_trained(args.checkpoint)
    except (FileNotFoundError, CheckpointError) as error:
        summary = os.path.join(args.checkpoint, "summary.json")  # what sample builds the model from: "now"
        message = str(error).replace(  # the check of a checkpoint against its config is resume's too
            "so resuming could not reproduce the run", f"so sample cannot load it into the model {summary} describes"
        )
        print(f"rnn-jax sample: error: {_as_flags(message, args.command_parser)}", file=sys.stderr)
        return 2
    task = tasks.make(config.task)
    if not hasattr(task, "decode"):
        raise ValueError(f"--checkpoint: the run trained on {config.task.task!r}; sampling needs a text task")
    text = report.generate_text(config.model, task, params, jax.random.key(seed), prime=prime,
                                length=args.length, temperature=args.temperature)  # fmt: skip
    print(prime + text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnn-jax",
        description="Recurrent networks as pure JAX functions: train, check gradients, benchmark.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train",
        help="train a model on a task, with progress, metrics.jsonl, summary.json and a loss-curve PNG",
        description="Train a recurrent network with BPTT (jax.grad through lax.scan) and a clipped optax "
        "optimiser. Writes OUT/metrics.jsonl (one JSON line per log/eval), OUT/summary.json, "
        "OUT/loss_curve.png and checkpoints of the whole training position in OUT/checkpoints, from which "
        "--resume continues a stopped run to the same result (or, with a constant learning rate, a finished "
        "one to more --steps).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for cls in (ModelConfig, TaskConfig, OptimConfig, RunConfig):
        add_dataclass_options(train, cls)
    train.set_defaults(command_parser=train, handler=_train)

    check = commands.add_parser(
        "gradcheck",
        help="compare BPTT gradients: autodiff, hand-derived, custom VJP, fused kernels, remat, forward mode, "
        "finite differences",
        description="Check that every way of computing the BPTT gradient agrees, in float64: reverse-mode "
        "jax.grad, the hand-derived BPTT equations, the custom-VJP fast path, the fused Pallas kernels, the "
        "rematerialised (checkpointed) scan, forward mode along random directions, and central finite "
        "differences; with --tbptt-k1/--tbptt-k2 also the truncated gradient "
        "against finite differences of the truncated objective. Prints the worst case per check and parameter; "
        "exits 1 when any check fails. Tolerances: 1e-10 relative for the analytic paths, 1e-6 for finite "
        "differences (see rnn_jax/gradcheck.py for why).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataclass_options(check, GradcheckConfig)
    check.add_argument("--json", metavar="PATH", default=None, help="also write the full report as JSON")
    check.add_argument("--explain", action="store_true", help="show the largest disagreement and where it occurred")
    check.set_defaults(command_parser=check, handler=_gradcheck)

    sample = commands.add_parser(
        "sample",
        help="generate text from a trained character-level model (the --out directory of rnn-jax train)",
        description="Load the newest checkpoint of a text run (rnn-jax train --task shakespeare --out DIR) and "
        "print text sampled from it after reading a prime.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sample.add_argument("--checkpoint", metavar="DIR", required=True, help="the run's --out directory")
    sample.add_argument("--prime", default="ROMEO:\\n", help="text the model reads first ('\\n' is a newline)")
    sample.add_argument("--length", type=int, default=500, help="characters to generate")
    sample.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (lower: safer)")
    sample.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    sample.set_defaults(command_parser=sample, handler=_sample)

    bench = commands.add_parser(
        "bench",
        help="time rnn-jax's autodiff and fast paths beside flax, PyTorch and a measured lower bound",
        description="Times, in one process with interleaved repeats, the forward pass and a full train step "
        "(forward, squared-error loss, BPTT, global-norm clipping, Adam) of rnn-jax's autodiff path, its fast "
        "path, flax.linen.RNN, torch.nn.RNN (when torch is installed; the better of 1 thread and all threads) and "
        "a measured lower bound (with several devices, on a CPU one per core, also the fast path data parallel over "
        "them and the lower bound so split), after checking that all of them compute the same first loss and "
        "gradients. "
        "Prints medians, p10-p90, compile time, peak memory, throughput and ratios; exits 1 when an "
        "implementation disagrees or fails (its error is printed; the others are still timed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataclass_options(bench, BenchConfig)
    bench.add_argument("--json", metavar="PATH", default=None, help="also write the records as a JSON list")
    bench.add_argument(
        "--plot",
        metavar="PATH",
        default=None,
        help="also draw the times as a figure (.png, .pdf or .svg): each implementation's median over rnn-jax-fast's "
        "(or the first --impl's), per size, train step and forward pass (rnn_jax.plotting.benchmark, which also "
        "draws a saved --json file)",
    )
    bench.set_defaults(command_parser=bench, handler=_bench)
    return parser


def _backend() -> str:
    import jax

    return jax.default_backend()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError) as error:
        parser.exit(2, f"rnn-jax {args.command}: error: {_as_flags(str(error), args.command_parser)}\n")
    except Exception as error:
        if type(error).__name__ != "JaxRuntimeError" or "RESOURCE_EXHAUSTED" not in str(error):
            raise
        first = str(error).strip().splitlines()[0]  # XLA's: "RESOURCE_EXHAUSTED: Out of memory allocating N bytes."
        sizes = "--length" if args.command == "sample" else "--hidden, --batch-size, --seq-len"
        parser.exit(1, f"rnn-jax {args.command}: error: out of memory on {_backend()} ({first}); try smaller sizes "
                       f"({sizes})\n")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
