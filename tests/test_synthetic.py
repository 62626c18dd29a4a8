"""Synthetic arithmetic: determinism, answers, carry constraints, disjoint splits and SFT stream."""
import itertools

import numpy as np
import pytest
from conftest import reward_settings

from dots_jax.config_base import base_config
from dots_jax.data import synthetic
from dots_jax.rewards import format_reversed, score_batch


def _syn(**kw):
  c = base_config().data.synthetic
  c.update(train_size=300, heldout_size=200, **kw)
  return c


def test_splits_deterministic_and_disjoint():
  syn = _syn()
  train, held = synthetic.synthetic_rows(syn, "train"), synthetic.synthetic_rows(syn, "heldout")
  assert train == synthetic.synthetic_rows(syn, "train")
  assert len(train) == 300 and len(held) == 200
  assert len({p for p, _, _ in train}) == 300
  assert not {p for p, _, _ in train} & {p for p, _, _ in held}
  other = synthetic.synthetic_rows(_syn(seed=syn.seed + 1), "train")
  assert [p for p, _, _ in other] != [p for p, _, _ in train]


def test_answers_correct_and_families_weighted():
  syn = _syn()
  rows = synthetic.synthetic_rows(syn, "train")
  for problem, answer, family in rows:
    assert eval(problem[:-1]) == int(answer), (problem, answer)  # noqa: S307 (our own digits)
  counts = np.array([sum(r[2] == f for r in rows) for f in syn.families])
  expected = 300 * np.asarray(syn.pool_weights) / np.sum(syn.pool_weights)
  assert counts.sum() == 300 and np.abs(counts - expected).max() < 1  # exact per-weight split


@pytest.mark.parametrize("name", sorted(synthetic.FAMILIES))
def test_family_constraints(name):
  fam = synthetic.FAMILIES[name]
  rng = np.random.default_rng(0)
  for _ in range(50):
    problem, answer = synthetic.sample_problem(fam, rng)
    operands = [int(x) for x in problem[:-1].replace("*", "+").replace("-", "+").split("+")]
    assert [len(str(v)) for v in operands] == list(fam.digits)
    assert int(answer) >= 0
    if fam.op != "*":
      assert fam.min_carries <= synthetic._carries(tuple(operands), fam.op) <= fam.max_carries


def test_carry_counting():
  assert synthetic._carries((123, 456), "+") == 0
  assert synthetic._carries((159, 261), "+") == 2  # 9+1 carries, 5+6+1 carries, 1+2+1 no
  assert synthetic._carries((503, 498), "-") == 2


def test_problem_structure_keys_operation_digits_and_carries():
  assert synthetic.problem_structure("159+261=") == "+3.3c2"
  assert synthetic.problem_structure("503-498=") == "-3.3c2"
  assert synthetic.problem_structure("12+34+56=") == "+2.2.2c2"  # 2+4+6 and 1+3+5+1 carry
  assert synthetic.problem_structure("23*4=") == "*2.1"
  with pytest.raises(ValueError, match="not a synthetic problem"):
    synthetic.problem_structure("What is 2+2?")


def test_noisy_demonstrations_drop_carries():
  rng = np.random.default_rng(0)
  assert synthetic.noisy_result((159, 261), "+", 0.0, rng) == 420
  assert synthetic.noisy_result((503, 498), "-", 0.0, rng) == 5
  # With every carry dropped: column sums mod 10 (9+1 -> 0, 5+6 -> 1, 1+2 -> 3).
  assert synthetic.noisy_result((159, 261), "+", 1.0 - 1e-12, rng) == 310
  assert synthetic.noisy_result((95, 17), "+", 1.0 - 1e-12, rng) == 2  # 5+7 -> 2, 9+1 -> 0, no 1
  # A question with k carries is answered exactly with probability (1 - drop)^k.
  hits = [synthetic.noisy_result((159, 261), "+", 0.4, rng) == 420 for _ in range(4000)]
  assert np.mean(hits) == pytest.approx(0.6 ** 2, abs=0.03)
  # The problems are the same for every drop rate; only the addition/subtraction answers change.
  syn = _syn()
  exact = list(itertools.islice(synthetic.sft_stream(syn), 300))
  noisy = list(itertools.islice(synthetic.sft_stream(syn, carry_drop=0.5), 300))
  assert [p for p, _, _ in exact] == [p for p, _, _ in noisy]
  assert 0 < sum(a != b for (_, a, _), (_, b, _) in zip(exact, noisy)) < 300
  with pytest.raises(ValueError, match="sft_carry_drop"):
    next(synthetic.sft_stream(syn, carry_drop=1.0))
  # A borrow rate of its own: subtraction answers change, addition answers stay exact.
  borrow = list(itertools.islice(synthetic.sft_stream(syn, borrow_drop=0.9), 300))
  changed = {"+": 0, "-": 0}
  for (p, a, _), (_, b, _) in zip(exact, borrow):
    op = "-" if "-" in p else "+"
    changed[op] += a != b
  assert changed["+"] == 0 < changed["-"]
  with pytest.raises(ValueError, match="sft_borrow_drop"):
    next(synthetic.sft_stream(syn, borrow_drop=1.0))


def test_sft_stream_disjoint_from_pool_and_heldout():
  syn = _syn()
  seen = {p for split in ("train", "heldout") for p, _, _ in synthetic.synthetic_rows(syn, split)}
  stream = list(itertools.islice(synthetic.sft_stream(syn), 3000))
  assert not {p for p, _, _ in stream} & seen
  assert stream[:50] == list(itertools.islice(synthetic.sft_stream(syn), 50))


def test_reversed_target_scores_one():
  rows = synthetic.synthetic_rows(_syn(), "heldout")[:40]
  golds = [a for _, a, _ in rows]
  scores, _ = score_batch([format_reversed(a) for a in golds], golds,
                          reward_settings(kind="reversed_digits", workers=0))
  assert scores.tolist() == [1.0] * len(rows)
  wrong, _ = score_batch(golds, golds, reward_settings(kind="reversed_digits", workers=0))
  assert wrong.mean() < 0.2  # only palindromes survive normal order


def test_bad_config_named():
  with pytest.raises(ValueError, match="unknown"):
    synthetic.synthetic_rows(_syn(families=("add2_nc", "nope"), pool_weights=(1.0, 1.0)), "train")
  with pytest.raises(ValueError, match="pool_weights"):
    synthetic.synthetic_rows(_syn(pool_weights=(1.0,)), "train")
  with pytest.raises(ValueError, match="split"):
    synthetic.synthetic_rows(_syn(), "test")


def test_default_base_draws_its_full_pool_and_never_demonstrates_products():
  """configs/tiny.py (issue 34's two-skill base): 4000 pool and 4000 held-out questions, disjoint,
  a quarter of each pinned (no-carry 2-digit additions, 2x2-digit products), and an SFT stream
  with no product in it; the micro preset draws from the same families."""
  from config_files import load_config
  assert load_config("tiny", "micro").data.synthetic.families == load_config("tiny").data.synthetic.families
  c = load_config("tiny")
  syn = c.data.synthetic
  train, heldout = (synthetic.synthetic_rows(syn, s) for s in ("train", "heldout"))
  assert len(train) == len(heldout) == 4000
  assert not {p for p, _, _ in train} & {p for p, _, _ in heldout}
  pinned = lambda rows: sum(f in ("add2_nc", "mul2x2") for _, _, f in rows) / len(rows)
  assert pinned(train) == pinned(heldout) == 0.25
  stream = list(itertools.islice(synthetic.sft_stream(syn, 0, c.tiny.sft_carry_drop,
                                                              c.tiny.sft_borrow_drop), 2000))
  assert not any("*" in p for p, _, _ in stream)
  assert {f for _, _, f in stream} == set(syn.families) - {"mul2x2"}
