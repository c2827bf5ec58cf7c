"""Sunspots: can a recurrent net forecast next month's sunspot number better than persistence?

Question. One-month-ahead forecasting of the monthly mean sunspot number (1749-2009; test = the final 10%,
1983-2009). Persistence (next month = this month) is a strong baseline on this noisy series and seasonal naive (the
value one 11-year cycle ago) a weak one. Does a small Elman network, reading the whole past, beat persistence in RMSE
and MAE (in sunspot numbers)?

Command:
  python -m experiments.sunspots            # full: Elman H = 16, windows of 120 months, 3000 steps
  python -m experiments.sunspots --quick    # the same net, 1000 steps

Expected runtime on 2 CPU cores: about 20 seconds with --quick, about 1 minute in full.
Expected result: test RMSE about 17 (17.1 measured) against 18.8 for persistence and 40.2 for seasonal naive.
Writes results.json, summary.md, loss_curve.png and forecast.png.
"""

from __future__ import annotations

import dataclasses
import sys

from experiments import _common, _real
from rnn_jax.config import Config, ModelConfig, OptimConfig, RunConfig, TaskConfig

QUESTION = __doc__.split("\n\n")[1].removeprefix("Question. ")
CONFIG = Config(
    model=ModelConfig(hidden=16),
    task=TaskConfig(task="sunspots", seq_len=120, batch_size=32),
    optim=OptimConfig(learning_rate=1e-3),
    run=RunConfig(steps=3000, eval_every=500, progress=False),
)
QUICK = dataclasses.replace(CONFIG, run=dataclasses.replace(CONFIG.run, steps=1000))

if __name__ == "__main__":
    metrics = ["rmse", "rmse_persistence", "rmse_seasonal_naive", "mae", "mae_persistence"]
    _common.run(_real.main, "sunspots", QUESTION, CONFIG, QUICK, sys.argv[1:], metrics, doc=__doc__)
