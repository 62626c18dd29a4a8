"""Score a JSONL file of {"response", "gold"} rows: `python -m dots_jax.rewards --pairs FILE.jsonl`.

Prints one score per row (in file order) on stdout and the reason counts on stderr. A malformed row is an
error naming the file and line; nothing is scored until every row has been read.
"""

import argparse
import json
import sys

from dots_jax.data.question import BadRow, jsonl_rows
from dots_jax.rewards.grader import KINDS, score_batch


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


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", required=True, help="JSONL file with string fields 'response' and 'gold'")
  parser.add_argument("--kind", default="math", choices=KINDS)
  parser.add_argument("--timeout_s", type=float, default=None, help="per-answer limit (config.reward default)")
  parser.add_argument("--workers", type=int, default=None, help="verifier processes (config.reward default)")
  args = parser.parse_args(argv)
  try:
    responses, golds = read_pairs(args.pairs)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  scores, stats = score_batch(responses, golds, kind=args.kind, timeout_s=args.timeout_s,
                              workers=args.workers)
  sys.stdout.write("".join(f"{s:g}\n" for s in scores))
  print(json.dumps(dict(stats.counts), sort_keys=True), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
