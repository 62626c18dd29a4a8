"""Cheap, conservative answer comparisons that run in the parent before any math-verify call.

Both fast paths only ever apply rewrites that cannot change an answer's meaning, so a fast-path match is
always a true match; anything they cannot decide goes to math-verify in the worker pool.
"""

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# Rewrites that only change presentation (spacing, sizing of delimiters, fraction style).
_PRESENTATION = (
    (re.compile(r"\\left\b|\\right\b"), ""),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\[!,;: ]|~"), ""),
    (re.compile(r"\\displaystyle\b"), ""),
    (re.compile(r"\s+"), ""),
)
_BRACE = re.compile(r"[{}]")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}$")
# Plain decimal numbers, optionally with correct thousands separators ("2,125", "1,000,000.5").
_FRACTION = re.compile(r"^(?P<sign>[+-]?)(?:\\frac\{(?P<n1>\d+)\}\{(?P<d1>\d+)\}|\\frac(?P<n2>\d)(?P<d2>\d)"
                       r"|(?P<n3>\d+)/(?P<d3>\d+))$")
_NUMBER = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$|^[+-]?\.\d+$")


def normalize(answer: str) -> str:
  """Presentation-only normalisation: strips `$`, spaces, `\\left`/`\\right`, `\\dfrac`, a trailing period,
  a whole-answer `\\text{...}` wrapper and whole-answer grouping braces."""
  s = answer.strip()
  while len(s) >= 2 and s[0] == "$" and s[-1] == "$":
    s = s[1:-1].strip()
  for pattern, repl in _PRESENTATION:
    s = pattern.sub(repl, s)
  s = s.rstrip(".")
  wrapped = _TEXT_WRAPPER.match(s)
  if wrapped:
    s = wrapped.group(1)
  for _ in range(3):  # bounded: each check is a scan of s
    if not (s.startswith("{") and _group_end(s) == len(s) - 1):
      break
    s = s[1:-1]  # `{x}` is LaTeX grouping, not a set (sets are `\{x\}`)
  return s


def _group_end(s: str) -> int:
  """Index of the brace closing the group opened at s[0] (unescaped braces only), or -1."""
  depth = 0
  for m in _BRACE.finditer(s):
    if m.start() > 0 and s[m.start() - 1] == "\\":
      continue
    depth += 1 if m.group(0) == "{" else -1
    if depth == 0:
      return m.start()
  return -1


def as_number(answer: str) -> Decimal | None:
  """`answer` as an exact decimal if it is a plain number (thousands separators allowed), else None."""
  s = normalize(answer)
  if len(s) > 64 or not _NUMBER.match(s):
    return None
  try:
    return Decimal(s.replace(",", ""))
  except InvalidOperation:
    return None


def as_rational(answer: str) -> tuple[Fraction, bool] | None:
  """(exact value, written with a decimal point) for a plain number or a simple fraction
  (`\\frac{3}{4}`, `\\frac34`, `-3/4`), else None."""
  number = as_number(answer)
  if number is not None:
    return Fraction(number), "." in answer
  frac = _FRACTION.match(normalize(answer)) if len(answer) <= 64 else None
  if not frac:
    return None
  sign, num, den = frac.group("sign"), frac.group("n1") or frac.group("n2") or frac.group("n3"), (
      frac.group("d1") or frac.group("d2") or frac.group("d3"))
  if int(den) == 0:
    return None
  return Fraction(int(num), int(den)) * (-1 if sign == "-" else 1), False
