"""Final-answer extraction: the content of the last `\\boxed{...}` / `\\fbox{...}` in a response.

Linear time in the response length (a regex walks the braces), so megabyte responses with deep nesting
cost milliseconds, never a stalled step.
"""

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BRACE_RE = re.compile(r"[{}]")
# `\boxed 5` (no braces, as some models write it): the answer runs to the next `$` or whitespace.
_BARE_RE = re.compile(r"[^\s$]+")
# GSM8K-style final line, for responses that never box an answer.
_GSM8K_RE = re.compile(r"####\s*([-+]?[\d,]*\.?\d+)")

# Outcomes besides an answer; they double as RewardStats reasons.
NO_BOX = "no_box"
UNBALANCED = "unbalanced_box"


def last_boxed(text: str) -> tuple[str | None, str]:
  """Returns (answer, "") for the last box in `text`, else (None, reason).

  Only the last `\\boxed`/`\\fbox` counts (the convention of the Qwen2.5-Math and verl graders): if it is
  unbalanced the response is scored as unbalanced even when an earlier box is fine.
  """
  start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
  if start < 0:
    return None, NO_BOX
  cmd_end = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
  pos = cmd_end
  while pos < len(text) and text[pos] in " \t":
    pos += 1
  if pos >= len(text):
    return None, UNBALANCED
  if text[pos] != "{":
    if pos == cmd_end:
      # `\boxedfoo` is some other macro, not a box.
      return None, NO_BOX
    bare = _BARE_RE.match(text, pos)
    return (bare.group(0), "") if bare else (None, NO_BOX)
  depth = 0
  for brace in _BRACE_RE.finditer(text, pos):
    # A `\{` or `\}` is a literal brace in LaTeX and does not open or close the group.
    if brace.start() > 0 and text[brace.start() - 1] == "\\":
      continue
    depth += 1 if brace.group(0) == "{" else -1
    if depth == 0:
      return text[pos + 1:brace.start()], ""
  return None, UNBALANCED


def final_answer(text: str) -> tuple[str | None, str]:
  """The last boxed answer, else a GSM8K `#### 72` final line, else (None, reason)."""
  answer, reason = last_boxed(text)
  if answer is None and reason == NO_BOX:
    hashes = list(_GSM8K_RE.finditer(text[-2000:]))
    if hashes:
      return hashes[-1].group(1), ""
  return answer, reason
