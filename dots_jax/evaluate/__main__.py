"""Evaluate a policy on the benchmarks of a config, or a training run's checkpoint.

  python -m dots_jax.evaluate --config=configs/tiny.py --config.model.path=DIR
    samples config.eval.k answers per problem of every set in config.data.eval_sets with the
    temperature/top-p of config.eval, prints and writes JSON to config.eval.out.
  python -m dots_jax.evaluate --workdir=W [--step=S] [--config=...]
    evaluates checkpoint S (default: the latest) of a training run with the run's own config
    (W/config.json), or with --config's evaluation settings when one is given.
"""

import json
from collections.abc import Sequence

from dots_jax import fs
from dots_jax.config_common import ConfigError
from dots_jax.evaluate.benchmarks import evaluate_checkpoint, evaluate_workdir
from dots_jax.evaluate.scores import flat_metrics


def main(argv: Sequence[str]) -> None:
  from absl import app
  del argv
  config = _CONFIG.value
  try:
    if _WORKDIR.value:
      report = evaluate_workdir(_WORKDIR.value, _STEP.value, config)
      out = fs.join(_WORKDIR.value, f"eval_step_{report['step']}.json")
    elif config is None:
      raise ConfigError("pass --config=<config file> (and --config.model.path) or --workdir=<run>")
    else:
      report, out = evaluate_checkpoint(config), config.eval.out
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  fs.write_json(out, report)
  print(json.dumps(flat_metrics(report), indent=2, sort_keys=True))
  print(f"wrote {out}")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/tiny.py")
  _WORKDIR = flags.DEFINE_string("workdir", None, "evaluate a training run's checkpoint")
  _STEP = flags.DEFINE_integer("step", None, "with --workdir: checkpoint step (default: latest)")
  app.run(main)
