"""The DOTS offline stage as a job of its own: roll out the pool with the initial policy, fit the
estimator, save it (and with --quality, its held-out Pearson beside the raw-embedding baseline).

  python -m dots_jax.difficulty --config=configs/qwen1p5b_math.py --config.model.path=DIR \
      --config.data.manual_dir=/data        # prints the estimator directory
  python -m dots_jax.difficulty --config=configs/tiny.py --quality

Then: --config.selection.dots.estimator_path=<that directory> for DOTS runs.
"""

import json
import os
from typing import Any

from dots_jax.difficulty.offline import prepare_pool, train_on_pool
from dots_jax.difficulty.quality import evaluate_pool
from dots_jax.policy import policy_path
from dots_jax.run import settings


def main(argv: Any) -> None:
  del argv
  s = settings.read(_CONFIG.value)
  stage = settings.dots_stage(s, policy_path(s.model.path, s.tiny))
  pool = prepare_pool(stage)
  model = train_on_pool(stage, pool)
  print(f"saved estimator to {pool.out_dir}")
  if _QUALITY.value:
    report = evaluate_pool(stage, pool, model)
    path = os.path.join(pool.out_dir, "evaluation.json")
    with open(path, "w") as fh:
      json.dump(report, fh, indent=2)
    print(f"wrote {path}")
    print(f"{report['pearson_trained']:.4f}")
  else:
    print(f"use it with --config.selection.dots.estimator_path={pool.out_dir}")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py")
  _QUALITY = flags.DEFINE_bool("quality", False, "also measure the estimator's held-out Pearson "
                               "against the raw-embedding baseline (writes evaluation.json; the "
                               "last line is the trained estimator's Pearson)")
  app.run(main)
