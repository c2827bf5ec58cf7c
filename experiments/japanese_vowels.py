"""Japanese vowels: how well does a recurrent net tell nine speakers apart from 7 to 29 frames of cepstra?

Question. Speaker classification on the Japanese Vowels data (Kudo et al. 1999): many-to-one, variable lengths
(the state is frozen past each utterance's end and the class is read at its last frame). How accurate is an LSTM on
the official test set, next to always predicting the most frequent class?

Command:
  python -m experiments.japanese_vowels            # full: LSTM H = 64, 3000 steps
  python -m experiments.japanese_vowels --quick    # LSTM H = 32, 400 steps

Expected runtime on 2 CPU cores: about 30 seconds with --quick, about 3 minutes in full.
Expected result: test accuracy above 0.9 in full (0.935 measured; above 0.8 with --quick), against 0.08 for the
majority class.
Writes results.json, summary.md, loss_curve.png and confusion_matrix.png.
"""

from __future__ import annotations

import sys

from experiments import _common, _real
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig

QUESTION = __doc__.split("\n\n")[1].removeprefix("Question. ")
CONFIG = Config(
    model=ModelConfig(model="lstm", hidden=64),
    task=TaskConfig(task="japanese-vowels", batch_size=32),
    optim=OptimConfig(learning_rate=3e-3),
    run=RunConfig(steps=3000, eval_every=500, progress=False),
)
QUICK = Config(
    model=ModelConfig(model="lstm", hidden=32),
    task=TaskConfig(task="japanese-vowels", batch_size=32),
    optim=OptimConfig(learning_rate=3e-3),
    run=RunConfig(steps=400, eval_every=200, progress=False),
)

if __name__ == "__main__":
    metrics = ["accuracy", "loss"]
    _common.run(_real.main, "japanese_vowels", QUESTION, CONFIG, QUICK, sys.argv[1:], metrics, doc=__doc__)
