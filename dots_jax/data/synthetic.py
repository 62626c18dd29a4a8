"""Seeded synthetic arithmetic: the tiny testbed's RL pool, held-out split and SFT stream.

Why it looks like this (see ../shared/notes/tiny-testbed.md):
  * Answers are written least-significant digit first (`dots_jax.rewards.format_reversed`), then EOS:
    a tiny model learns carries in that order far faster than in normal order.
  * Families differ clearly in difficulty (digits, operation, number of carries), so that under uniform
    sampling most groups of G samples are all-correct or all-wrong. With the default families
    (config.data.synthetic) the SFT'd tiny base solves 2-digit add/subtract almost always, 4-digit
    add, three-term add and products almost never, and 3-digit add/subtract (carries, borrows) in
    between: the skills RL can still improve. The carry-constrained families (add3_c2, ...) make
    harder variants of the testbed.
  * The SFT stream is disjoint from the RL pool and the held-out split: SFT on the pool memorises it.

A question is its problem string ("123+456="); the gold `answer` is the normal-order result ("579");
the policy must emit `dots_jax.rewards.format_reversed(answer)` ("975") then EOS.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator

import numpy as np

from dots_jax.data.question import Question

_SPLIT_STREAMS = {"train": 1, "heldout": 2, "sft": 3, "sft_noise": 4}


@dataclasses.dataclass(frozen=True)
class Family:
  """One kind of question: `op` over operands of `digits` digits, with a carry/borrow constraint.

  `min_carries`/`max_carries` bound the number of carries (addition) or borrows (subtraction); they
  are ignored for multiplication. Operands have no leading zeros; subtraction keeps a >= b.
  """

  name: str
  op: str  # "+", "-", "*"
  digits: tuple[int, ...]
  min_carries: int = 0
  max_carries: int = 99


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("add2", "+", (2, 2)),  # any number of carries
    Family("add3", "+", (3, 3)),
    Family("add4", "+", (4, 4)),
    Family("sub2", "-", (2, 2)),
    Family("sub3", "-", (3, 3)),
    Family("mul2x1", "*", (2, 1)),
    Family("add2_nc", "+", (2, 2), 0, 0),  # no carries: near-certain after SFT
    Family("add3_nc", "+", (3, 3), 0, 0),
    Family("add3_c1", "+", (3, 3), 1, 1),  # one carry
    Family("add3_c2", "+", (3, 3), 2, 3),  # carry chains: the middle skill
    Family("add4_c", "+", (4, 4), 2, 4),  # same skill, longer: transfer target
    Family("add5_c", "+", (5, 5), 3, 5),
    Family("add6_c", "+", (6, 6), 4, 6),  # the long tail of carry chains
    Family("sub3_b", "-", (3, 3), 1, 3),  # with borrows
    Family("sub4_b", "-", (4, 4), 2, 4),
    Family("sub5_b", "-", (5, 5), 3, 5),
    Family("add3t", "+", (2, 2, 2)),  # three terms
    Family("mul3x1", "*", (3, 1)),
    Family("mul2x2", "*", (2, 2)),  # out of reach: all-wrong groups
)}


def _carries(values: tuple[int, ...], op: str) -> int:
  """Number of carries (addition) or borrows (subtraction) in column arithmetic."""
  count, carry = 0, 0
  width = max(len(str(v)) for v in values)
  for col in range(width):
    digits = [(v // 10 ** col) % 10 for v in values]
    if op == "+":
      total = sum(digits) + carry
      carry = total // 10
    else:
      total = digits[0] - sum(digits[1:]) - carry
      carry = 1 if total < 0 else 0
    count += carry > 0
  return count


def problem_structure(problem: str) -> str:
  """What decides a synthetic question's difficulty for a carry-skill policy: its operation, operand
  digit counts and carries/borrows, e.g. "+3.3c2" for "681+928=" (a key to group questions by)."""
  m = re.fullmatch(r"(\d+(?:[+*-]\d+)+)=", problem)
  if not m:
    raise ValueError(f"not a synthetic problem: {problem!r}")
  op = next(c for c in problem if c in "+-*")
  operands = problem[:-1].split(op)
  digits = ".".join(str(len(o)) for o in operands)
  if op == "*":
    return f"*{digits}"
  return f"{op}{digits}c{_carries(tuple(int(o) for o in operands), op)}"


def noisy_result(values: tuple[int, ...], op: str, drop: float, rng: np.random.Generator) -> int:
  """Column arithmetic in which each carry (addition) or borrow (subtraction) is dropped, i.e. not
  passed on to the next column, independently with probability `drop`.

  The result of a demonstrator that executes the shared carry skill unreliably: a question with k
  carries is answered exactly with probability (1 - drop)^k, so a policy imitating it has a pass
  rate graded by carry count that RL can raise by sharpening one skill. drop = 0 is exact.
  """
  width = max(len(str(v)) for v in values)
  digits_out, carry = [], 0
  for col in range(width):
    digits = [(v // 10 ** col) % 10 for v in values]
    if op == "+":
      total = sum(digits) + carry
      digit, carry = total % 10, total // 10
    else:
      total = digits[0] - sum(digits[1:]) - carry
      digit, carry = total % 10, 1 if total < 0 else 0
    digits_out.append(digit)
    if carry and rng.random() < drop:
      carry = 0
  result = sum(d * 10 ** i for i, d in enumerate(digits_out))
  if op == "+":
    result += carry * 10 ** width
  return result


def _operand(rng: np.random.Generator, digits: int, low_one_digit: int = 0) -> int:
  if digits == 1:
    return int(rng.integers(max(low_one_digit, 0), 10))
  return int(rng.integers(10 ** (digits - 1), 10 ** digits))


def sample_problem(family: Family, rng: np.random.Generator) -> tuple[str, str]:
  """One (problem, normal-order answer) pair of `family`, by rejection on the carry constraint."""
  for _ in range(10_000):
    if family.op == "*":
      a = _operand(rng, family.digits[0])
      b = _operand(rng, family.digits[1], low_one_digit=2)  # x0 and x1 are trivial
      return f"{a}*{b}=", str(a * b)
    values = tuple(_operand(rng, d) for d in family.digits)
    if family.op == "-":
      values = tuple(sorted(values, reverse=True))
    if family.min_carries <= _carries(values, family.op) <= family.max_carries:
      result = values[0] - sum(values[1:]) if family.op == "-" else sum(values)
      return family.op.join(map(str, values)) + "=", str(result)
  raise ValueError(f"family {family.name}: carry constraint [{family.min_carries}, "
                   f"{family.max_carries}] is unsatisfiable for digits {family.digits}")


def _families_and_weights(syn: Any, key: str) -> tuple[list[Family], np.ndarray]:
  names = list(syn.families)
  weights = np.asarray(getattr(syn, key), np.float64)
  unknown = [n for n in names if n not in FAMILIES]
  if unknown:
    raise ValueError(f"config.data.synthetic.families: unknown {unknown}; known: {sorted(FAMILIES)}")
  if weights.shape != (len(names),) or (weights < 0).any() or weights.sum() <= 0:
    raise ValueError(f"config.data.synthetic.{key} must be {len(names)} non-negative weights "
                     f"(one per family), got {tuple(getattr(syn, key))}")
  return [FAMILIES[n] for n in names], weights / weights.sum()


def _counts(size: int, probs: np.ndarray) -> np.ndarray:
  """Exact per-family counts summing to `size` (largest remainder), so splits are balanced."""
  raw = size * probs
  counts = np.floor(raw).astype(int)
  for i in np.argsort(-(raw - counts))[: size - counts.sum()]:
    counts[i] += 1
  return counts


def _draw_split(families: list[Family], counts: np.ndarray, rng: np.random.Generator,
                exclude: set[str]) -> list[tuple[str, str, str]]:
  rows = []
  for fam, n in zip(families, counts):
    seen: set[str] = set()
    tries = 0
    while len(seen) < n:
      tries += 1
      if tries > 50 * n + 1000:
        raise ValueError(f"family {fam.name}: cannot draw {n} distinct questions; lower "
                         "config.data.synthetic.train_size/heldout_size or its weight")
      problem, answer = sample_problem(fam, rng)
      if problem in exclude or problem in seen:
        continue
      seen.add(problem)
      rows.append((problem, answer, fam.name))
  order = rng.permutation(len(rows))
  return [rows[i] for i in order]


def synthetic_rows(syn: Any, split: str) -> list[tuple[str, str, str]]:
  """(problem, answer, family) rows of split "train" or "heldout"; deterministic in `syn.seed`.

  The held-out split excludes every train problem, so the two are disjoint by construction.
  `syn` is `config.data.synthetic`.
  """
  if split not in ("train", "heldout"):
    raise ValueError(f"synthetic split must be 'train' or 'heldout', got {split!r}")
  families, probs = _families_and_weights(syn, "pool_weights")
  train = _draw_split(families, _counts(syn.train_size, probs),
                      np.random.default_rng([syn.seed, _SPLIT_STREAMS["train"]]), set())
  if split == "train":
    return train
  return _draw_split(families, _counts(syn.heldout_size, probs),
                     np.random.default_rng([syn.seed, _SPLIT_STREAMS["heldout"]]),
                     {p for p, _, _ in train})


def synthetic_questions(syn: Any, split: str) -> list:
  """The split as `dots_jax.data.Question` records (meta holds the family name)."""
  return [Question(id=f"synthetic-{split}-{i}", index=i, problem=p, answer=a, meta={"family": f})
          for i, (p, a, f) in enumerate(synthetic_rows(syn, split))]


def sft_stream(syn: Any, seed: int = 0, carry_drop: float = 0.0, borrow_drop: float = -1.0
               ) -> Iterator[tuple[str, str, str]]:
  """Endless (problem, answer, family) stream for supervised warm-up, disjoint from both splits.

  Families are drawn with `syn.sft_weights`; every problem in the RL pool or held-out split is
  skipped, so SFT cannot memorise what RL and evaluation later see. With `carry_drop` > 0 the
  answers of addition and subtraction problems are demonstrations that drop each carry/borrow with
  that probability (`noisy_result`; products stay exact); `borrow_drop` >= 0 gives subtraction its
  own rate (negative: the same as addition). The noise has its own random stream, so the sequence of
  problems is the same for every rate.
  """
  if not 0.0 <= carry_drop < 1.0:
    raise ValueError(f"config.tiny.sft_carry_drop must be in [0, 1), got {carry_drop}")
  if borrow_drop >= 1.0:
    raise ValueError(f"config.tiny.sft_borrow_drop must be < 1 (negative: sft_carry_drop), got "
                     f"{borrow_drop}")
  drop = {"+": carry_drop, "-": carry_drop if borrow_drop < 0 else borrow_drop}
  families, probs = _families_and_weights(syn, "sft_weights")
  exclude = {p for split in ("train", "heldout") for p, _, _ in synthetic_rows(syn, split)}
  rng = np.random.default_rng([syn.seed, _SPLIT_STREAMS["sft"], seed])
  noise = np.random.default_rng([syn.seed, _SPLIT_STREAMS["sft_noise"], seed])
  while True:
    fam = families[int(rng.choice(len(families), p=probs))]
    problem, answer = sample_problem(fam, rng)
    if problem in exclude:
      continue
    if fam.op != "*" and drop[fam.op] > 0:
      values = tuple(int(v) for v in problem[:-1].split(fam.op))
      answer = str(noisy_result(values, fam.op, drop[fam.op], noise))
    yield problem, answer, fam.name
