"""Score a JSONL file of {"response", "gold"} rows: `python -m dots_jax.rewards --pairs FILE.jsonl`.

Prints one score per row (in file order) on stdout and the reason counts on stderr. A malformed row is an
error naming the file and line; nothing is scored until every row has been read.
"""

import json
import sys

from dots_jax.data.question import BadRow, jsonl_rows
from dots_jax.rewards.grader import KINDS, RewardSettings, score_batch


def read_pairs(path: str) -> tuple[list[str], list[str]]:
  responses, golds = [], []
  for line_no, row in jsonl_rows(path):
    if isinstance(row, BadRow):
      raise ValueError(f"{path}:{line_no}: {row}")
    if not isinstance(row, dict):
      raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
    for key in ("response", "gold"):
      if not isinstance(row.get(key), str):
        raise ValueError(f"{path}:{line_no}: field {key!r} must be a string, got {row.get(key)!r:.80}")
    responses.append(row["response"])
    golds.append(row["gold"])
  if not responses:
    raise ValueError(f"{path}: no rows")
  return responses, golds


def main(argv: list[str]) -> None:
  del argv
  from dots_jax.config_base import base_config  # an entry point: the config's defaults, at its edge
  defaults = base_config().reward
  settings = RewardSettings(
      kind=_KIND.value, timeout_s=defaults.timeout_s if _TIMEOUT.value is None else _TIMEOUT.value,
      workers=defaults.workers if _WORKERS.value is None else _WORKERS.value,
      max_answer_chars=defaults.max_answer_chars, format_score=defaults.format_score)
  try:
    responses, golds = read_pairs(_PAIRS.value)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  scores, stats = score_batch(responses, golds, settings)
  sys.stdout.write("".join(f"{s:g}\n" for s in scores))
  print(json.dumps(dict(stats.counts), sort_keys=True), file=sys.stderr)


if __name__ == "__main__":
  from absl import app, flags
  _PAIRS = flags.DEFINE_string("pairs", None, "JSONL file with string fields 'response' and 'gold'",
                               required=True)
  _KIND = flags.DEFINE_enum("kind", "math", list(KINDS), "answer format")
  _TIMEOUT = flags.DEFINE_float("timeout_s", None, "per-answer limit (default: config.reward's)")
  _WORKERS = flags.DEFINE_integer("workers", None, "verifier processes (default: config.reward's)")
  app.run(main)
