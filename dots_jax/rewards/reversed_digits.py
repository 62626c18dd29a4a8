"""The synthetic task's answer format: an integer written least-significant digit first.

Format (shared by the synthetic generator, the tiny SFT data and the reward): the completion is the gold
integer string reversed character by character, followed by EOS. A negative answer keeps its sign at the
most-significant end, so after reversal the '-' comes last: "-120" -> "021-", "7" -> "7". Gold answers are
canonical integers (no leading zeros except "0" itself, no '+', no "-0"). Surrounding whitespace in the
completion is ignored; nothing else is (no extra leading/trailing zeros, no separators).
"""

import re

_CANONICAL_INT = re.compile(r"^(?:0|-?[1-9]\d*)$")


def format_reversed(answer: str) -> str:
  """The completion text that answers a question whose gold is the canonical integer `answer`."""
  if not _CANONICAL_INT.match(answer):
    raise ValueError(f"reversed-digit answers must be canonical integers, got {answer!r}")
  return answer[::-1]


def parse_reversed(completion: str) -> str | None:
  """The integer a completion states (most-significant digit first), or None if it states none."""
  forward = completion.strip()[::-1]
  return forward if _CANONICAL_INT.match(forward) else None


def is_canonical_int(answer: str) -> bool:
  return bool(_CANONICAL_INT.match(answer))
