"""Every gold answer of the shared benchmark files, written as \\boxed{gold}, scores 1 against itself.

The pipeline (fast paths first) runs on every gold of all eleven shared files; the math-verify path
alone (fast paths bypassed) runs on a fixed sample of the seven benchmark files here. A full run of
the math-verify path over all 50,964 golds of the eleven files gave 0 failures (about five minutes
on the shared 2-core machine; numbers in the data engineer's report).
"""

import json

import numpy as np
import os

import pytest
from conftest import reward_settings

from dots_jax.data.sources import shared_data_dir
from dots_jax.config_base import base_config
from dots_jax.rewards import score_batch
from dots_jax.rewards.verify_pool import get_pool

FILES = ("math500", "gsm8k_test", "minerva_math", "olympiadbench", "aime24", "amc23", "math_train")
ALL_FILES = FILES + ("math_test", "gsm8k_train", "dapo_math_17k", "deepscaler_10240")
SAMPLE_PER_FILE = 40


def _golds(name: str) -> list[str]:
  path = os.path.join(shared_data_dir(base_config().data), f"{name}.jsonl")
  if not os.path.isfile(path):
    pytest.skip(f"{path} not found: set DOTS_JAX_DATA to the shared benchmark directory")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["answer"] for line in f if line.strip()]


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_gold_scores_one_against_itself(name):
  golds = _golds(name)
  responses = [f"Reasoning... so the final answer is $\\boxed{{{g}}}$." for g in golds]
  scores, stats = score_batch(responses, golds, reward_settings(timeout_s=10, workers=2))
  failing = [(i, g) for i, (g, s) in enumerate(zip(golds, scores)) if s != 1.0]
  assert not failing, (len(failing), failing[:10], stats.counts)


@pytest.mark.parametrize("name", FILES)
def test_math_verify_alone_accepts_gold_sample(name):
  golds = _golds(name)
  step = max(1, len(golds) // SAMPLE_PER_FILE)
  sample = golds[::step][:SAMPLE_PER_FILE]
  outcomes = get_pool(2).run([(g, g) for g in sample], timeout_s=10)
  failing = [(g, o) for g, o in zip(sample, outcomes) if o != "verified"]
  assert not failing, failing


def _perturb(gold: str) -> str | None:
  """The gold with its first digit changed (d -> d+1 mod 10), or None if it has no digit."""
  for i, ch in enumerate(gold):
    if ch.isdigit():
      return gold[:i] + str((int(ch) + 1) % 10) + gold[i + 1:]
  return None


@pytest.mark.parametrize("name", ("math500", "olympiadbench", "gsm8k_test"))
def test_perturbed_golds_score_zero(name):
  golds = _golds(name)[::5][:SAMPLE_PER_FILE * 2]
  pairs = [(g, p) for g in golds if (p := _perturb(g)) is not None]
  scores, stats = score_batch([f"\\boxed{{{p}}}" for _, p in pairs], [g for g, _ in pairs], reward_settings(timeout_s=10, workers=2))
  accepted = [pair for pair, s in zip(pairs, scores) if s != 0.0]
  assert not accepted, (len(accepted), accepted[:10], stats.counts)


def test_format_score_for_boxed_but_wrong_answers():
  """GRESO's reward: 1 correct, 0.1 with a \\boxed{} answer that is wrong, 0 without one."""
  from dots_jax.rewards import score_batch
  responses = ["so \\boxed{4}", "so \\boxed{5}", "the answer is 4", "\\boxed{4"]
  scores, stats = score_batch(responses, ["4"] * 4, reward_settings(workers=0, format_score=0.1))
  np.testing.assert_allclose(scores, [1.0, 0.1, 0.0, 0.0])
  plain, _ = score_batch(responses, ["4"] * 4, reward_settings(workers=0))
  np.testing.assert_allclose(plain, [1.0, 0.0, 0.0, 0.0])
  with pytest.raises(ValueError, match="format_score"):
    score_batch(responses, ["4"] * 4, reward_settings(workers=0, format_score=1.0))
