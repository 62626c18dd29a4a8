"""Imported once by the reward pool's forkserver: builds math-verify's lazily created parsers and
sympy caches there, so every forked worker (including replacements of killed ones) starts warm and
its first answer is not charged seconds of one-off setup against its timeout.

Not imported anywhere else (it costs about a second of CPU).
"""

import logging

from math_verify import parse, verify

logging.getLogger("math_verify").setLevel(logging.ERROR)

_WARM_PAIRS = (
    ("\\frac{1}{2}", "0.5"), ("x^2+1", "1+x^2"), ("[1,2)", "(1,2]"), ("(3, \\pi)", "(3,\\pi)"),
    ("\\sqrt{8}", "2\\sqrt{2}"), ("\\text{Evelyn}", "Evelyn"), ("30^\\circ", "30"), ("10\\%", "0.1"),
    ("y=2x+1", "2x+1"), ("\\{1,2\\}", "\\{2,1\\}"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "(1,2)"),
)
for _gold, _pred in _WARM_PAIRS:
  verify(parse("\\boxed{" + _gold + "}", parsing_timeout=None),
         parse("\\boxed{" + _pred + "}", parsing_timeout=None), timeout_seconds=None)
