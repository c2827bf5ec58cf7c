"""Sequence to sequence: the numbers task's tables, the encoder-decoder against Python-loop oracles, training."""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import oracle
import pytest
from jax.test_util import check_grads
from jaxprs import scan_stacked_dtypes

from rnn_jax import cells, cli, seq2seq, tasks, train
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig
from rnn_jax.seq2seq import END, GO, PAD

CELLS = ("elman", "lstm", "gru")

# ------------------------------------------------------------------ an independent speller and reader


def english(n: int) -> str:
    """The English name of n in [0, 999999], written here independently of rnn_jax (no 'and', no hyphens)."""
    small = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
    ]  # fmt: skip
    tens = dict(
        zip(range(2, 10), ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"], strict=True)
    )

    def hundreds(m: int) -> list[str]:
        words = [small[m // 100], "hundred"] if m >= 100 else []
        m %= 100
        if m >= 20:
            words += [tens[m // 10]] + ([small[m % 10]] if m % 10 else [])
        elif m:
            words += [small[m]]
        return words

    if n == 0:
        return "zero"
    words = (hundreds(n // 1000) + ["thousand"] if n >= 1000 else []) + hundreds(n % 1000)
    return " ".join(words)


def read_number(text: str) -> int:
    """The value of an English number name, by accumulating words (the inverse of a speller)."""
    values = {w: i for i, w in enumerate(english(i) for i in range(20))}
    values.update({english(10 * k): 10 * k for k in range(2, 10)})
    total = current = 0
    for word in text.split():
        if word == "hundred":
            current *= 100
        elif word == "thousand":
            total, current = total + current * 1000, 0
        else:
            current += values[word]
    return total + current


def decode_all(task: tasks.Numbers, batch: seq2seq.Seq2SeqBatch) -> tuple[list[str], list[str]]:
    source, target = np.asarray(batch.source), np.asarray(batch.target)
    return (
        [task.source_text(source[:, b]) for b in range(source.shape[1])],
        [task.target_text(target[:, b]) for b in range(target.shape[1])],
    )


# ------------------------------------------------------------------ the task


@pytest.mark.parametrize("max_value", [999, pytest.param(99_999, marks=pytest.mark.slow)])
def test_every_number_spells_and_reads_back_with_its_digits_and_lengths(max_value):
    task = tasks.Numbers(max_value=max_value)
    numbers = np.arange(max_value + 1)
    if max_value > 999:  # the default stage checks every number up to 999 and 5000 of the rest
        numbers = np.concatenate([numbers[:2000], np.random.default_rng(1).choice(numbers, 3000, replace=False)])
    batch = task.rows(numbers)
    sources, targets = decode_all(task, batch)
    source_lengths, target_lengths = np.asarray(batch.source_lengths), np.asarray(batch.target_lengths)
    target = np.asarray(batch.target)
    for i, n in enumerate(numbers.tolist()):
        assert sources[i] == english(n) and read_number(sources[i]) == n
        assert targets[i] == str(n)
        assert source_lengths[i] == len(english(n).split()) and target_lengths[i] == len(str(n)) + 1
        assert target[target_lengths[i] - 1, i] == END and (target[target_lengths[i] :, i] == PAD).all()
        assert (np.asarray(batch.source)[source_lengths[i] :, i] == PAD).all()
    assert batch.source.shape[0] == max(len(english(n).split()) for n in range(max_value + 1))


@pytest.mark.slow
def test_every_number_up_to_999999_spells_right():
    task = tasks.Numbers(max_value=999_999)
    for start in range(0, 1_000_000, 100_000):
        sources, targets = decode_all(task, task.rows(np.arange(start, start + 100_000)))
        for i, n in enumerate(range(start, start + 100_000)):
            assert sources[i] == english(n) and targets[i] == str(n)


def test_reverse_source_feeds_each_name_last_word_first():
    forward, backward = tasks.Numbers(), tasks.Numbers(reverse_source=True)
    numbers = np.arange(1000)
    reversed_sources, _ = decode_all(backward, backward.rows(numbers))
    assert reversed_sources == [" ".join(english(n).split()[::-1]) for n in numbers]
    same = ("source_lengths", "target", "target_lengths")
    for name in same:
        np.testing.assert_array_equal(getattr(forward.rows(numbers), name), getattr(backward.rows(numbers), name))


def test_held_out_numbers_are_fixed_disjoint_and_never_drawn_in_training():
    task = tasks.Numbers(max_value=999)
    train_set, validation, test = (set(task.numbers(s).tolist()) for s in ("train", "validation", "test"))
    assert train_set | validation | test == set(range(1000))
    assert not (train_set & validation or train_set & test or validation & test)
    assert len(validation) == len(test) == 100
    again = tasks.Numbers(max_value=999)
    assert all((task.numbers(s) == again.numbers(s)).all() for s in ("train", "validation", "test"))
    make_batch = jax.jit(lambda k: task.batch(k, 512))
    seen = set()
    for i in range(4):
        _, targets = decode_all(task, make_batch(jax.random.key(i)))
        seen |= {int(t) for t in targets}
    assert seen <= train_set and len(seen) > 0.8 * len(train_set)  # uniform over the training numbers
    _, held = decode_all(task, task.eval_batch("validation"))
    assert sorted(int(t) for t in held) == sorted(validation)
    big = tasks.Numbers(max_value=999_999)
    assert len(big.numbers("validation")) == len(big.numbers("test")) == 1000  # capped at 2000 held out


def test_batches_are_a_pure_function_of_the_key(key):
    task = tasks.Numbers()
    first, again = task.batch(key, 64), jax.jit(lambda k: task.batch(k, 64))(key)
    other = task.batch(jax.random.fold_in(key, 1), 64)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.array_equal(first.target, other.target)
    assert first.source.shape == (4, 64) and first.target.shape == (4, 64)
    assert all(a.dtype == jnp.int32 for a in first)


def test_baseline_is_the_position_wise_most_frequent_training_token_on_the_test_split():
    task = tasks.Numbers(max_value=999)
    train_digits = [str(n) + "$" for n in task.numbers("train")]  # "$" stands for <end>
    test_digits = [str(n) + "$" for n in task.numbers("test")]
    modes = []
    for t in range(4):
        counts = collections.Counter(d[t] for d in train_digits if len(d) > t)
        modes.append(counts.most_common(1)[0][0])
    right = sum(d[t] == modes[t] for d in test_digits for t in range(len(d)))
    baseline = task.baseline()
    assert baseline["token_accuracy"] == pytest.approx(right / sum(len(d) for d in test_digits))
    mode_string = "".join(modes)[: "".join(modes).index("$") + 1] if "$" in modes else None
    assert baseline["exact_match"] == pytest.approx(np.mean([d == mode_string for d in test_digits]))
    assert baseline["loss"] > 1.0  # blind to the source, it cannot know the digits


# ------------------------------------------------------------------ the model against Python loops


def _oracle_run(model: str, params, xs: np.ndarray, state=None, lengths=None):
    """outputs [T, B, O] and the final state of the oracle loop for ``model`` (NumPy float64)."""
    if model == "elman":
        outputs, _, final = oracle.elman_loop(params, xs, s0=state, lengths=lengths)
    elif model == "lstm":
        h0, c0 = (None, None) if state is None else state
        outputs, _, final = oracle.lstm_loop(params, xs, h0=h0, c0=c0, lengths=lengths)
    else:
        outputs, _, final = oracle.gru_loop(params, xs, h0=state, lengths=lengths)
    return outputs, final


def _tiny(model: str, key, dtype=jnp.float64, hidden=5, embed=3):
    task = tasks.Numbers(max_value=999)
    params = seq2seq.init(key, model, task.input_size, task.output_size, hidden, embed_size=embed, dtype=dtype)
    batch = task.rows([7, 342, 5, 100, 0, 919])
    return task, params, batch


def _teacher_forced_oracle(model: str, params, batch) -> np.ndarray:
    emb_src, emb_tgt = np.asarray(params.source_embedding), np.asarray(params.target_embedding)
    source, target = np.asarray(batch.source), np.asarray(batch.target)
    _, state = _oracle_run(model, params.encoder, emb_src[source], lengths=np.asarray(batch.source_lengths))
    fed = np.concatenate([np.full((1, target.shape[1]), GO), target[:-1]])
    outputs, _ = _oracle_run(model, params.decoder, emb_tgt[fed], state=state)
    return outputs


@pytest.mark.parametrize("model", CELLS)
def test_teacher_forced_logits_equal_encoder_and_decoder_python_loops(model, key, x64):
    _, params, batch = _tiny(model, key)
    logits = seq2seq.teacher_forced(params, batch.source, batch.source_lengths, batch.target)
    assert logits.shape == (4, 6, len(tasks.numbers.TARGET_VOCABULARY))
    np.testing.assert_allclose(logits, _teacher_forced_oracle(model, params, batch), rtol=1e-10, atol=1e-12)
    assert seq2seq.cell_of(params) is cells.get(model)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU form of bfloat16 scans")
def test_greedy_decoding_in_bfloat16_stacks_float32_on_a_cpu_with_the_same_values(key, monkeypatch):
    """A bfloat16 model's decoded logits are stacked in float32 inside the loop (`rnn_jax.unroll.
    CPU_WIDENED_BFLOAT16_SCANS`: XLA:CPU converts a whole bfloat16 [L, ...] buffer at every step otherwise) and
    returned in bfloat16, equal bit for bit to stacking them in bfloat16."""
    _, params, batch = _tiny("lstm", key, dtype=jnp.bfloat16)

    def decode():  # a new function each call: jit caches its trace by function, not by the flag
        return jax.jit(lambda p: seq2seq.greedy_decode(p, batch.source, batch.source_lengths, 6))(params)

    def stacked_dtypes():
        return scan_stacked_dtypes(
            jax.make_jaxpr(lambda p: seq2seq.greedy_decode(p, batch.source, batch.source_lengths, 6))(params).jaxpr
        )

    assert jnp.dtype(jnp.bfloat16) not in stacked_dtypes()
    widened = decode()
    assert widened.logits.dtype == jnp.bfloat16
    monkeypatch.setattr(importlib.import_module("rnn_jax.unroll"), "CPU_WIDENED_BFLOAT16_SCANS", False)
    assert jnp.dtype(jnp.bfloat16) in stacked_dtypes()
    chex.assert_trees_all_equal(widened, decode())


@pytest.mark.parametrize("model", CELLS)
def test_greedy_decoding_equals_a_python_loop_that_feeds_back_the_argmax(model, key, x64):
    _, params, batch = _tiny(model, key)
    # make <end> likely enough that some sequences stop early and some never do, so both paths are exercised
    decoder = params.decoder._replace(b_y=params.decoder.b_y.at[END].add(0.3))
    params = params._replace(decoder=decoder)
    max_length = 7
    decoded = jax.jit(seq2seq.greedy_decode, static_argnums=3)(params, batch.source, batch.source_lengths, max_length)
    emb_src, emb_tgt = np.asarray(params.source_embedding), np.asarray(params.target_embedding)
    source, lengths = np.asarray(batch.source), np.asarray(batch.source_lengths)
    expected_tokens = np.full((max_length, source.shape[1]), PAD)
    expected_lengths = []
    for b in range(source.shape[1]):
        _, state = _oracle_run(model, params.encoder, emb_src[source[: lengths[b], b : b + 1]])
        token, stopped = GO, None
        for t in range(max_length):
            (y,), state = _oracle_run(model, params.decoder, emb_tgt[[[token]]], state=state)
            token = int(np.argmax(y[0]))
            if stopped is None:
                expected_tokens[t, b] = token
                if token == END:
                    stopped = t + 1
        expected_lengths.append(stopped or max_length)
    np.testing.assert_array_equal(decoded.tokens, expected_tokens)
    np.testing.assert_array_equal(decoded.lengths, expected_lengths)
    assert min(expected_lengths) < max_length  # the stopping path was exercised


def test_loss_counts_exactly_the_valid_target_steps_and_ignores_padding(key, x64):
    _, params, batch = _tiny("lstm", key)
    logits = _teacher_forced_oracle("lstm", params, batch)
    target, lengths = np.asarray(batch.target), np.asarray(batch.target_lengths)
    terms = [
        -(logits[t, b, target[t, b]] - np.log(np.exp(logits[t, b]).sum()))
        for b in range(target.shape[1])
        for t in range(lengths[b])
    ]
    loss = seq2seq.loss(params, batch)
    np.testing.assert_allclose(loss, np.mean(terms), rtol=1e-10)
    # other tokens in the padding of source and target change nothing
    source_pad = np.arange(batch.source.shape[0])[:, None] >= np.asarray(batch.source_lengths)[None, :]
    target_pad = np.arange(batch.target.shape[0])[:, None] >= lengths[None, :]
    noisy = batch._replace(source=jnp.where(source_pad, 5, batch.source), target=jnp.where(target_pad, 7, batch.target))
    assert source_pad.any() and target_pad.any()
    np.testing.assert_allclose(seq2seq.loss(params, noisy), loss, rtol=1e-12)


@pytest.mark.parametrize("model", [pytest.param(m, marks=[] if m == "lstm" else pytest.mark.slow) for m in CELLS])
def test_gradients_match_finite_differences_in_float64(model, key, x64):
    _, params, batch = _tiny(model, key, hidden=3, embed=2)
    loss = jax.jit(lambda p: seq2seq.loss(p, batch))
    check_grads(loss, (params,), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("model", [pytest.param(m, marks=[] if m == "lstm" else pytest.mark.slow) for m in CELLS])
def test_remat_and_bfloat16_apply_to_both_scans(model, key):
    """remat (k = 2 and sqrt, over the 4 source and 4 target steps) gives the loss and gradients of remat=None
    in float64 (relative 1e-10); bfloat16 compute keeps float32 logits and gradients within 3% (relative, over
    all gradients) of float32's, and not equal to them."""
    value_and_grad = jax.jit(jax.value_and_grad(seq2seq.loss), static_argnames=("remat", "compute_dtype"))
    with jax.enable_x64(True):
        _, params, batch = _tiny(model, key)
        want = value_and_grad(params, batch)
        for remat in (2, "sqrt"):
            got = value_and_grad(params, batch, remat=remat)
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=f"remat={remat}")
    _, params, batch = _tiny(model, key, dtype=jnp.float32)
    logits = seq2seq.teacher_forced(params, batch.source, batch.source_lengths, batch.target,
                                    compute_dtype=jnp.bfloat16)  # fmt: skip
    assert logits.dtype == jnp.float32
    (value, grads), (want_value, want_grads) = value_and_grad(params, batch, compute_dtype=jnp.bfloat16), \
        value_and_grad(params, batch)  # fmt: skip
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    assert abs(float(value) - float(want_value)) <= 3e-2 * abs(float(want_value))
    assert 0 < oracle.relative_error(grads, want_grads) <= 3e-2


def test_training_passes_remat_and_precision_to_the_encoder_decoder(key, record_scan_options):
    """--remat and --precision reach `seq2seq.loss` from the train step's loss (traced only, nothing compiled)."""
    seen = record_scan_options(seq2seq, "loss")
    task, params, batch = _tiny("gru", key, dtype=jnp.float32)
    model = ModelConfig(model="gru", hidden=5, remat="sqrt", precision="bfloat16")
    value = jax.eval_shape(lambda p: train.make_loss_fn(model, task)(p, batch), params)
    assert seen == [("sqrt", jnp.bfloat16)] and value.dtype == jnp.float32


def test_sequence_metrics_count_every_token_up_to_the_end():
    target = jnp.array([[3, 4], [2, 5], [PAD, 2]], jnp.int32)  # "0" <end> | "1" "2" <end>
    lengths = jnp.array([2, 3], jnp.int32)
    right = jnp.array([[3, 4], [2, 5], [9, 2], [2, 2]], jnp.int32)  # garbage past the end does not count
    early_end = jnp.array([[3, 4], [2, 2], [PAD, PAD]], jnp.int32)  # the second stops one digit short
    assert seq2seq.sequence_metrics(right, target, lengths) == {"token_accuracy": 1.0, "exact_match": 1.0}
    metrics = seq2seq.sequence_metrics(early_end, target, lengths)
    assert float(metrics["exact_match"]) == 0.5 and float(metrics["token_accuracy"]) == pytest.approx(3 / 5)


@pytest.mark.parametrize(
    ("lengths", "error", "message"),
    [
        ([0, 3], ValueError, r"target_lengths: expected every length in \[1, T=3\], got values in \[0, 3\]"),
        ([-1, 3], ValueError, r"target_lengths: expected every length in \[1, T=3\], got values in \[-1, 3\]"),
        ([2, 4], ValueError, r"target_lengths: expected every length in \[1, T=3\], got values in \[2, 4\]"),
        ([2.0, 3.0], TypeError, r"target_lengths: expected an integer dtype, got dtype float32"),
        ([2], ValueError, r"target_lengths: expected the batch size B = 2 on axis 0, got 1"),
    ],
)
def test_sequence_metrics_refuse_target_lengths_outside_1_to_t(lengths, error, message):
    """A length 0 or below made every token of that sequence count as right (its exact match 1), a length past T
    was read as T: accuracy came out silently wrong."""
    target = jnp.array([[3, 4], [2, 5], [PAD, 2]], jnp.int32)
    with pytest.raises(error, match=message):
        seq2seq.sequence_metrics(target, target, jnp.array(lengths))


@pytest.mark.parametrize("bad_key", [0, jnp.zeros((3,), jnp.uint32)])
def test_init_refuses_what_is_not_one_prng_key(bad_key):
    with pytest.raises(TypeError, match=r"key: expected a JAX PRNG key \(jax.random.key\(seed\) or "):
        seq2seq.init(bad_key, "gru", 11, 12, 8)


def test_init_takes_a_legacy_key():
    chex.assert_trees_all_equal(
        seq2seq.init(jax.random.PRNGKey(0), "lstm", 11, 12, 8), seq2seq.init(jax.random.key(0), "lstm", 11, 12, 8)
    )


# ------------------------------------------------------------------ training through train_and_evaluate


def _config(steps: int = 150, **run) -> Config:
    return Config(
        model=ModelConfig(model="lstm", hidden=32),
        task=TaskConfig(task="numbers", batch_size=32),
        optim=OptimConfig(learning_rate=1e-2),
        run=RunConfig(**{"steps": steps, "eval_every": steps, "log_every": 50, "progress": False, **run}),
    )


def test_short_training_beats_the_baseline_on_held_out_numbers(standard_promotion):
    summary = train.train_and_evaluate(_config())
    baseline = summary["baseline"]
    assert baseline["exact_match"] < 0.05
    for split in ("final_eval", "final_test"):  # greedy decoding of numbers never seen in training
        assert summary[split]["exact_match"] > baseline["exact_match"] + 0.5
        assert summary[split]["token_accuracy"] > baseline["token_accuracy"] + 0.3
        assert summary[split]["loss"] < baseline["loss"]


@pytest.mark.slow
def test_checkpoints_resume_bit_for_bit_load_back_and_sample_refuses(tmp_path, capsys, standard_promotion):
    out = tmp_path / "run"
    config = _config(steps=100, checkpoint_every=50, eval_every=50, out=str(out))
    summary = train.train_and_evaluate(config, str(out))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "eval"] == [50, 100]
    assert "exact_match" in json.loads((out / "summary.json").read_text())["final_test"]
    shutil.rmtree(out / "checkpoints" / "100")  # as if the run had been killed after step 50's checkpoint
    resumed = train.train_and_evaluate(
        dataclasses.replace(config, run=dataclasses.replace(config.run, resume=True)), str(out)
    )
    assert resumed["resumed_from_step"] == 50
    jax.tree.map(np.testing.assert_array_equal, resumed["params"], summary["params"])
    loaded_config, params = train.load_trained(str(out))  # the checkpoint holds the encoder-decoder
    assert loaded_config.task.task == "numbers" and isinstance(params, seq2seq.Seq2SeqParams)
    jax.tree.map(np.testing.assert_array_equal, params, summary["params"])
    with pytest.raises(SystemExit):
        cli.main(["sample", "--checkpoint", str(out)])
    assert "sampling needs a text task" in capsys.readouterr().err


# ------------------------------------------------------------------ bad input


def test_bad_inputs_get_clear_errors(key):
    with pytest.raises(ValueError, match=r"max_value: expected an integer in \[9, 999999\], got 1000000"):
        tasks.Numbers(max_value=1_000_000)
    with pytest.raises(ValueError, match="max_value: an option of the numbers task only"):
        tasks.make(TaskConfig(task="adding", max_value=99))
    with pytest.raises(ValueError, match="split: expected 'validation' or 'test'"):
        tasks.Numbers().eval_batch("train")
    with pytest.raises(ValueError, match="model: expected one of"):
        seq2seq.init(key, "transformer", 31, 13, 4)
    with pytest.raises(ValueError, match="target_vocab: expected at least 3"):
        seq2seq.init(key, "gru", 31, 2, 4)
    task, params, batch = _tiny("gru", key, dtype=jnp.float32)
    with pytest.raises(TypeError, match="source: expected integer token ids"):
        seq2seq.encode(params, batch.source.astype(jnp.float32), batch.source_lengths)
    with pytest.raises(ValueError, match=r"source: expected token ids in \[0, 31\)"):
        seq2seq.encode(params, batch.source + 40, batch.source_lengths)
    with pytest.raises(ValueError, match=r"source_lengths: expected every length in \[1, T=4\]"):
        seq2seq.encode(params, batch.source, batch.source_lengths.at[0].set(0))
    with pytest.raises(ValueError, match="remat: expected None, a positive integer k or 'sqrt', got 0"):
        seq2seq.loss(params, batch, remat=0)
    with pytest.raises(TypeError, match="compute_dtype: expected a floating dtype or None"):
        seq2seq.encode(params, batch.source, batch.source_lengths, compute_dtype=jnp.int8)
    with pytest.raises(ValueError, match="target: expected the batch size B of source"):
        seq2seq.teacher_forced(params, batch.source, batch.source_lengths, batch.target[:, :2])
    mixed = params._replace(decoder=seq2seq.init(key, "lstm", 31, 13, 4).decoder)
    with pytest.raises(TypeError, match="GRUParams and LSTMParams"):
        seq2seq.loss(mixed, batch)
    config = _config(tbptt_k1=5)
    with pytest.raises(ValueError, match="tbptt_k1: truncated BPTT needs a stream; the 'numbers' task"):
        train._make_advance(config, task, None, None, key, jnp.float32)
    with pytest.raises(ValueError, match="backward: the encoder-decoder is differentiated by autodiff"):
        train.make_loss_fn(dataclasses.replace(config.model, backward="bptt"), task)
    with pytest.raises(ValueError, match="the encoder-decoder \\(numbers task\\) has one layer of each cell"):
        train.make_loss_fn(dataclasses.replace(config.model, layers=2), task)
    with pytest.raises(ValueError, match="projections: the choice of projections .* use 'auto', got 'hoisted'"):
        train.make_loss_fn(dataclasses.replace(config.model, projections="hoisted"), task)
    with pytest.raises(ValueError, match="precision: 'bfloat16' keeps float32 parameters; needs dtype float32"):
        train.make_loss_fn(dataclasses.replace(config.model, precision="bfloat16", dtype="float64"), task)


def _other(key, *, source_vocab=31, target_vocab=13, hidden=5, embed=3):
    """Encoder-decoder parameters that differ from `_tiny`'s GRU (V_s 31, V_t 13, H 5, E 3) in the given sizes."""
    return seq2seq.init(key, "gru", source_vocab, target_vocab, hidden, embed_size=embed, dtype=jnp.float32)


ENTRIES = {  # every public function that runs the parameters, each called on `_tiny`'s batch
    "encode": lambda p, b: seq2seq.encode(p, b.source, b.source_lengths),
    "teacher_forced": lambda p, b: seq2seq.teacher_forced(p, b.source, b.source_lengths, b.target),
    "greedy_decode": lambda p, b: seq2seq.greedy_decode(p, b.source, b.source_lengths, 4),
    "loss": seq2seq.loss,
    "evaluate": seq2seq.evaluate,
    "jit(loss)": jax.jit(seq2seq.loss),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize(
    ("mismatch", "message"),
    [
        (
            lambda p, k: p._replace(source_embedding=_other(k, embed=4).source_embedding),
            r"params.source_embedding, params.encoder.w_x: expected the source embedding width E to equal the "
            r"encoder's input width D, got E = 4 \(params.source_embedding of shape \(31, 4\)\) and D = 3 ",
        ),
        (
            lambda p, k: p._replace(encoder=_other(k, hidden=7).encoder),
            r"params.encoder.w_s, params.decoder.w_s: expected the encoder's state size H to equal the decoder's "
            r"state size H, got H = 7 \(params.encoder.w_s of shape \(7, 21\)\) and H = 5 ",
        ),
        (
            lambda p, k: p._replace(target_embedding=_other(k, embed=4).target_embedding),
            r"params.target_embedding, params.decoder.w_x: expected the target embedding width E to equal the "
            r"decoder's input width D, got E = 4 \(params.target_embedding of shape \(13, 4\)\) and D = 3 ",
        ),
        (
            lambda p, k: p._replace(decoder=_other(k, target_vocab=18).decoder),
            r"params.decoder.w_y, params.target_embedding: expected the decoder's output width O to equal the "
            r"target vocabulary size V_t, got O = 18 \(params.decoder.w_y of shape \(5, 18\)\) and V_t = 13 ",
        ),
        (
            lambda p, k: p._replace(decoder=_other(k, target_vocab=11).decoder),
            r"params.decoder.w_y, params.target_embedding: .* got O = 11 .* and V_t = 13 ",
        ),
        (
            lambda p, k: p._replace(decoder=p.decoder._replace(w_y=_other(k, hidden=7).decoder.w_y)),
            r"params.w_y: expected shape \[H, O\] = \(5, 13\), got \(7, 13\)",
        ),
        (
            lambda p, k: p._replace(target_embedding=p.target_embedding[:2], decoder=cells.gru.init(k, 3, 5, 2)),
            r"params.target_embedding: expected at least 3 rows \(<pad>, <go>, <end>\), got shape \(2, 3\)",
        ),
    ],
    ids=["source E", "encoder H", "target E", "decoder O > V_t", "decoder O < V_t", "decoder w_y", "V_t < 3"],
)
def test_params_whose_pieces_disagree_in_width_are_refused_by_every_entry_naming_both(key, mismatch, message, entry):
    """Each of these failed inside XLA (a dot_general shape error) or, for a decoder with more outputs than target
    tokens, decoded token ids past the embedding and NaN logits; under jit too, as they are shapes."""
    _, params, batch = _tiny("gru", key, dtype=jnp.float32)
    with pytest.raises(ValueError, match=message):
        ENTRIES[entry](mismatch(params, key), batch)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("evaluate", r"batch.target: expected at least one step \[T, B\] with T >= 1, got shape \(0, 6\)"),
        ("teacher_forced", r"target: expected at least one step \[T, B\] with T >= 1, got shape \(0, 6\)"),
        ("jit(loss)", r"target: expected at least one step \[T, B\] with T >= 1, got shape \(0, 6\)"),
    ],
    ids=["evaluate", "teacher_forced", "jit(loss)"],
)
def test_a_target_of_no_steps_is_refused_naming_the_target(key, entry, message):
    """evaluate's error named max_length (greedy_decode's, which the caller never passed); teacher forcing returned
    logits of no steps, and the jitted loss 0.0."""
    _, params, batch = _tiny("gru", key, dtype=jnp.float32)
    with pytest.raises(ValueError, match=message):
        ENTRIES[entry](params, batch._replace(target=batch.target[:0]))


def test_a_source_of_no_steps_is_refused_naming_the_source(key):
    """Under jit (no length check on traced lengths) the encoder returned its zero state."""
    _, params, batch = _tiny("gru", key, dtype=jnp.float32)
    with pytest.raises(
        ValueError, match=r"source: expected at least one step \[S, B\] with S >= 1, got shape \(0, 6\)"
    ):
        jax.jit(seq2seq.encode)(params, batch.source[:0], batch.source_lengths)


def test_sequence_metrics_refuse_a_decoded_and_ask_for_its_tokens(key):
    """The whole `Decoded` of greedy_decode failed with an AttributeError ('Decoded' object has no attribute 'ndim')."""
    _, params, batch = _tiny("gru", key, dtype=jnp.float32)
    decoded = seq2seq.greedy_decode(params, batch.source, batch.source_lengths, 4)
    with pytest.raises(
        TypeError, match=r"predicted: expected \[L, B\] token ids, got a Decoded .* pass decoded.tokens"
    ):
        seq2seq.sequence_metrics(decoded, batch.target, batch.target_lengths)
    with pytest.raises(
        TypeError, match=r"predicted: expected \[L, B\] token ids \(a jax.Array or np.ndarray\), got list"
    ):
        seq2seq.sequence_metrics([[3]], batch.target, batch.target_lengths)
    assert seq2seq.sequence_metrics(decoded.tokens, batch.target, batch.target_lengths).keys() == {
        "token_accuracy", "exact_match",
    }  # fmt: skip
