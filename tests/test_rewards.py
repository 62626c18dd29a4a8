"""Math and reversed-digit rewards: extraction, equivalence table, perturbations, timeouts, CLI."""

import json
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
from conftest import reward_settings

from dots_jax.rewards import format_reversed, parse_reversed, score, score_batch
from dots_jax.rewards.extract import final_answer, last_boxed
from dots_jax.rewards.normalize import as_number, as_rational, normalize

WORKERS = 2


@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{42}.", ("42", "")),
    ("\\boxed{1} then \\boxed{\\frac{1}{2}}", ("\\frac{1}{2}", "")),
    ("\\fbox{7}", ("7", "")),
    ("\\boxed{\\{1,2\\}}", ("\\{1,2\\}", "")),  # escaped braces are literal
    ("\\boxed {x^{2}}", ("x^{2}", "")),
    ("$\\boxed 5$", ("5", "")),
    ("no box here", (None, "no_box")),
    ("\\boxed{\\frac{1}{2}", (None, "unbalanced_box")),
    ("ends with \\boxed", (None, "unbalanced_box")),
    ("\\boxedfoo", (None, "no_box")),
])
def test_last_boxed(text, expected):
  assert last_boxed(text) == expected


def test_final_answer_falls_back_to_gsm8k_line():
  assert final_answer("She pays 3 * 4 = 12.\n#### 1,212") == ("1,212", "")
  assert final_answer("The answer is 12.") == (None, "no_box")


def test_normalize_and_numbers():
  assert normalize(" $\\left( 1, \\dfrac{1}{2} \\right)$ ") == "(1,\\frac{1}{2})"
  assert normalize("\\text{Evelyn}") == "Evelyn"
  assert normalize("{(1, 2)}") == "(1,2)" and normalize("{a}{b}") == "{a}{b}"
  assert normalize("\\{1,2\\}") == "\\{1,2\\}"  # a set keeps its braces
  assert as_number("2,125") == as_number("2125.0")
  assert as_number("1,2") is None  # a tuple, not a thousands separator
  assert as_number("\\frac{1}{2}") is None
  assert as_rational("-\\dfrac{10}{4}") == (Fraction(-5, 2), False)
  assert as_rational("0.25") == (Fraction(1, 4), True)
  assert as_rational("\\frac{1}{0}") is None and as_rational("x/2") is None


# (gold, response answer) pairs that must score 1.
EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"),
    ("0.5", "\\frac{1}{2}"),
    ("\\frac{3}{4}", "3/4"),
    ("\\dfrac{3}{4}", "\\frac34"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("30^\\circ", "30"),
    ("30", "30^{\\circ}"),
    ("[1,2)", "[1, 2)"),
    ("(-\\infty, 3]", "(-\\infty,3]"),
    ("x \\in [2,5)", "[2,5)"),
    ("\\text{Evelyn}", "Evelyn"),
    ("\\text{(C)}", "C"),
    ("2,125", "2125"),
    ("18", "18.00"),
    ("10\\%", "10"),
    ("\\sqrt{8}", "2\\sqrt{2}"),
    ("y = 2x + 1", "2x+1"),
    ("2x+1", "1+2x"),
    ("\\{1, 2\\}", "\\{2, 1\\}"),
    ("\\left( -\\frac{2}{5}, 3 \\right)", "{(-\\frac{2}{5}, 3)}"),  # math-verify alone reads {..} as a set
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
]

# (gold, response answer) pairs that must score 0.
PERTURBED = [
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("0.5", "0.55"),
    ("(3, \\frac{\\pi}{2})", "(\\frac{\\pi}{2}, 3)"),
    ("[1,2)", "[1,2]"),
    ("2,125", "2126"),
    ("2,125", "2,12"),
    ("\\text{Evelyn}", "Bob"),
    ("2x+1", "2x-1"),
    ("\\sqrt{8}", "3\\sqrt{2}"),
    ("-3", "3"),
]


def test_equivalent_forms_score_one():
  responses = [f"Thus the answer is $\\boxed{{{p}}}$." for _, p in EQUIVALENT]
  scores, stats = score_batch(responses, [g for g, _ in EQUIVALENT], reward_settings(timeout_s=10, workers=WORKERS))
  failed = [pair for pair, s in zip(EQUIVALENT, scores) if s != 1.0]
  assert not failed, (failed, stats.counts)


def test_perturbed_answers_score_zero():
  responses = [f"\\boxed{{{p}}}" for _, p in PERTURBED]
  scores, stats = score_batch(responses, [g for g, _ in PERTURBED], reward_settings(timeout_s=10, workers=WORKERS))
  passed = [pair for pair, s in zip(PERTURBED, scores) if s != 0.0]
  assert not passed, passed
  assert stats.counts["mismatch"] == len(PERTURBED)


def test_reasons_are_counted_and_scores_are_float32():
  responses = ["\\boxed{5}", "\\boxed{ 5 }", "\\boxed{5.0}", "\\boxed{\\sqrt{25}}", "no box",
               "\\boxed{5", "\\boxed{6}", 17]
  scores, stats = score_batch(responses, ["5"] * len(responses), reward_settings(timeout_s=10, workers=WORKERS))
  assert scores.dtype == np.float32
  assert scores.tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
  assert stats.counts == {"exact": 2, "numeric": 1, "verified": 1, "no_box": 1, "unbalanced_box": 1,
                          "mismatch": 1, "bad_input": 1}
  assert stats.total == len(responses)
  assert stats.as_dict()["reward/exact"] == 2.0
  _, more = score_batch(["\\boxed{}", "\\boxed{ $ $ }"], ["\\text{}", "5"], reward_settings(timeout_s=10, workers=WORKERS))
  assert more.counts == {"empty_answer": 2}
  merged = stats.merge(more)
  assert merged.total == len(responses) + 2 and merged.counts["empty_answer"] == 2


def test_duplicate_answers_are_verified_once():
  responses = ["\\boxed{\\frac{2}{\\sqrt{2}}}"] * 6 + ["\\boxed{2^{1/2}}"] * 2
  scores, stats = score_batch(responses, ["\\sqrt{2}"] * 8, reward_settings(timeout_s=10, workers=WORKERS))
  assert scores.tolist() == [1.0] * 8
  assert stats.verify_calls == 2


@pytest.mark.parametrize("gold,answer,reason", [
    ("\\frac{1}{2}", "0.5", "numeric"),
    ("-\\dfrac{10}{4}", "-5/2", "numeric"),
    ("025", "25", "numeric"),  # AIME golds keep leading zeros
    ("\\frac{1}{2}", "\\frac{1}{3}", "mismatch"),
    ("7", "8", "mismatch"),
    ("\\frac{1}{3}", "0.333333", "verified"),  # unequal decimals go to math-verify's rounding
])
def test_rational_fast_path(gold, answer, reason):
  scores, stats = score_batch([f"\\boxed{{{answer}}}"], [gold], reward_settings(timeout_s=10, workers=WORKERS))
  assert stats.counts == {reason: 1}
  assert scores[0] == (reason != "mismatch")


def test_too_long_answer_is_not_parsed():
  scores, stats = score_batch(["\\boxed{" + "1+" * 600 + "1}"], ["1201"], reward_settings(timeout_s=10, workers=WORKERS, max_answer_chars=1000))
  assert scores.tolist() == [0.0] and stats.counts == {"too_long": 1}


def test_timeout_kills_and_replaces_stuck_worker():
  hostile = "\\boxed{9^{9^{9^{9^{9}}}}}"
  t0 = time.perf_counter()
  scores, stats = score_batch([hostile, "\\boxed{\\frac{1}{2}}"], ["3", "0.5"], reward_settings(timeout_s=0.5, workers=WORKERS))
  elapsed = time.perf_counter() - t0
  assert scores.tolist() == [0.0, 1.0]
  assert stats.counts["timeout"] == 1 and stats.workers_replaced == 1
  assert elapsed < 10  # 0.5 s limit + kill; spawning the replacement does not block the batch
  # The pool still works after a replacement.
  scores, _ = score_batch(["\\boxed{\\sqrt{4}}"], ["2"], reward_settings(timeout_s=5, workers=WORKERS))
  assert scores.tolist() == [1.0]


def test_inline_mode_without_workers():
  scores, stats = score_batch(["\\boxed{\\sqrt{4}}", "\\boxed{3}"], ["2", "4"], reward_settings(timeout_s=5, workers=0))
  assert scores.tolist() == [1.0, 0.0] and stats.verify_calls == 1


def test_score_single():
  assert score("The answer is \\boxed{\\dfrac{1}{2}}", "\\frac12", reward_settings()) == 1.0
  assert score("The answer is \\boxed{3}", "4", reward_settings()) == 0.0


def test_unknown_kind_and_length_mismatch_raise():
  with pytest.raises(ValueError, match="config.reward.kind"):
    score_batch(["a"], ["b"], reward_settings(kind="nope"))
  with pytest.raises(ValueError, match="2 responses but 1 golds"):
    score_batch(["a", "b"], ["c"], reward_settings())


def test_reversed_digits_format_and_score():
  assert format_reversed("120") == "021"
  assert format_reversed("-45") == "54-"
  assert format_reversed("0") == "0"
  with pytest.raises(ValueError):
    format_reversed("007")
  assert parse_reversed(" 021\n") == "120"
  assert parse_reversed("21") == "12"
  assert parse_reversed("1200") is None  # "0021": a leading zero is not a canonical integer
  golds = ["120", "120", "120", "-45", "-45", "7", "x"]
  completions = ["021", " 021 ", "21", "54-", "45", "abc", "x"]
  scores, stats = score_batch(completions, golds, reward_settings(kind="reversed_digits"))
  assert scores.tolist() == [1, 1, 0, 1, 0, 0, 0]
  assert stats.counts == {"exact": 3, "mismatch": 2, "parse_fail": 1, "bad_input": 1}
  # The format and the reward agree on every answer the generator can produce.
  for n in [0, 5, 10, 99, 1000, -1, -300]:
    s, _ = score_batch([format_reversed(str(n))], [str(n)], reward_settings(kind="reversed_digits"))
    assert s[0] == 1.0


def _run_cli(tmp_path, rows: list[str]):
  path = tmp_path / "pairs.jsonl"
  path.write_text("\n".join(rows) + "\n")
  return subprocess.run([sys.executable, "-m", "dots_jax.rewards", "--pairs", str(path), "--workers", "1"],
                        capture_output=True, text=True, timeout=120), path


def test_cli_prints_one_score_per_row(tmp_path):
  rows = [json.dumps({"response": r, "gold": g}) for r, g in
          [("\\boxed{2}", "2"), ("\\boxed{0.5}", "\\frac12"), ("none", "1")]]
  proc, _ = _run_cli(tmp_path, rows)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split() == ["1", "1", "0"]


def test_cli_bad_row_names_file_and_line(tmp_path):
  rows = [json.dumps({"response": "\\boxed{2}", "gold": "2"}), json.dumps({"response": "x"})]
  proc, path = _run_cli(tmp_path, rows)
  assert proc.returncode == 2
  assert f"{path}:2" in proc.stderr and "'gold'" in proc.stderr
  proc, path = _run_cli(tmp_path, ["{not json"])
  assert proc.returncode == 2 and f"{path}:1: not valid JSON" in proc.stderr
