"""Evaluation metrics (avg@k, unbiased pass@k, standard error, DOTS average) and the Evaluator."""

import itertools
import json
import math

import jax
import numpy as np
import pytest

from dots_jax.config_base import base_config
from dots_jax.run import settings
from dots_jax.evaluate.benchmarks import Evaluator
from dots_jax.evaluate.scores import dots_average, flat_metrics, pass_at_k, summarize
from dots_jax.fs import write_json
from dots_jax.data.question import Question
from dots_jax.rewards import format_reversed
from dots_jax.policy.tokenizer import make_char_tokenizer


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
  """Fraction of k-subsets of n samples (c correct) that contain a correct one."""
  samples = [1] * c + [0] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (5, 2, 1), (5, 2, 3), (8, 1, 4), (8, 7, 2),
                                   (6, 0, 6), (6, 3, 6)])
def test_pass_at_k_matches_enumeration(n, c, k):
  assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k), abs=1e-12)


def test_pass_at_k_large_n_and_bad_args():
  assert pass_at_k(1000, 10, 1) == pytest.approx(0.01)
  assert pass_at_k(1000, 10, 100) == pytest.approx(1 - math.comb(990, 100) / math.comb(1000, 100))
  with pytest.raises(ValueError):
    pass_at_k(4, 5, 1)
  with pytest.raises(ValueError):
    pass_at_k(4, 1, 5)


def test_summarize():
  scores = np.array([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], np.float32)
  m = summarize(scores)
  assert m["avg@4"] == pytest.approx(5 / 12)
  per_q = np.array([1.0, 0.25, 0.0])
  assert m["stderr"] == pytest.approx(per_q.std(ddof=1) / math.sqrt(3))
  assert m["pass@1"] == pytest.approx(5 / 12)
  assert m["pass@2"] == pytest.approx((1 + 0.5 + 0) / 3)
  assert m["pass@4"] == pytest.approx(2 / 3)
  assert summarize(np.array([[1.0]]))["stderr"] == 0.0


def test_dots_average():
  sets = {n: {"k": 1, "avg@1": v} for n, v in
          [("gsm8k_test", 0.8), ("math500", 0.6), ("minerva_math", 0.2), ("olympiadbench", 0.2)]}
  assert dots_average(sets) == pytest.approx(0.45)
  assert dots_average({**sets, "aime24": {"k": 1, "avg@1": 1.0}}) == pytest.approx(0.45)
  del sets["minerva_math"]
  assert dots_average(sets) is None


class _FakeSet:

  def __init__(self, name, rows):
    self.name = name
    self.rows = [Question(f"{name}-{i}", i, p, a, {}) for i, (p, a) in enumerate(rows)]

  def __len__(self):
    return len(self.rows)

  def get_batch(self, indices):
    return [self.rows[i] for i in indices]


def make_evaluator(c, tok, sets):
  """The job's Evaluator for config `c`, from its typed settings."""
  s = settings.read(c)
  return Evaluator(tok, s.data, s.eval, s.reward, sets=sets)


def test_evaluator_with_fake_generate(tmp_path):
  tok = make_char_tokenizer()
  c = base_config()
  c.data.update(chat_template=False, system_prompt="none", max_prompt_tokens=12, prompt_overflow="drop")
  c.eval.update(k=4, batch=2, max_questions=0)
  c.reward.update(workers=2, timeout_s=10)
  synthetic = _FakeSet("synthetic_heldout", [("12+3=", "15"), ("7+8=", "15"), ("99+1=", "100"),
                                             ("123456789+123=", "123456912")])  # last is too long: dropped
  math_set = _FakeSet("math500", [("half of 1?", "\\frac{1}{2}"), ("2+2?", "4")])
  evaluator = make_evaluator(c, tok, sets={"synthetic_heldout": synthetic, "math500": math_set})
  assert evaluator.prompt_counts["synthetic_heldout"] == {"total": 4, "kept": 3, "dropped": 1}
  by_prompt = {p.problem: p.answer for s in (synthetic, math_set) for p in s.rows}
  calls = []

  def generate(prompts, k, rng):
    calls.append((len(prompts), k))
    out = []
    for ids in prompts:
      problem = tok.decode(ids)
      gold = by_prompt[problem]
      if problem.endswith("="):  # synthetic: the first sample right, the rest right only for "15"
        out.append([format_reversed(gold)] + [format_reversed(gold) if gold == "15" else "0"] * (k - 1))
      else:
        out.append(["\\boxed{0.5}" if gold.startswith("\\frac") else "\\boxed{5}"] * k)
    return out

  report = evaluator.run(generate, jax.random.key(0), step=7)
  assert calls == [(2, 4), (1, 4), (2, 4)]  # eval.batch prompts per call
  syn = report["sets"]["synthetic_heldout"]
  assert syn["avg@4"] == pytest.approx((1 + 1 + 0.25) / 3)
  assert syn["pass@4"] == 1.0 and syn["pass@1"] == pytest.approx(syn["avg@4"])
  assert report["sets"]["math500"]["avg@4"] == 0.5
  assert report["sets"]["math500"]["reward_reasons"] == {"numeric": 4, "mismatch": 4}
  assert report["dots_average"] is None and report["step"] == 7
  flat = flat_metrics(report)
  assert flat["eval/math500/avg@4"] == 0.5 and "eval/synthetic_heldout/pass@2" in flat
  path = tmp_path / "out" / "eval.json"
  write_json(str(path), report)
  assert json.loads(path.read_text())["sets"]["math500"]["pass@4"] == 0.5


def test_evaluator_breaks_accuracy_down_by_meta_group():
  tok = make_char_tokenizer()
  c = base_config()
  c.data.update(chat_template=False, system_prompt="none", max_prompt_tokens=12)
  c.eval.update(k=2, batch=8, group_by="family")
  c.reward.update(workers=0)
  rows = [("1+1=", "2", "add"), ("2+2=", "4", "add"), ("3-1=", "2", "sub"), ("5*5=", "25", None)]
  qs = _FakeSet("synthetic_heldout", [(p, a) for p, a, _ in rows])
  for q, (_, _, fam) in zip(qs.rows, rows):
    if fam:
      q.meta["family"] = fam
  right = {"1+1=", "3-1="}  # both samples right on these, one of two on "5*5=", none on "2+2="

  def generate(prompts, k, rng):
    out = []
    for ids in prompts:
      problem = tok.decode(ids)
      gold = format_reversed(next(a for p, a, _ in rows if p == problem))
      out.append([gold, gold] if problem in right else [gold, "0"] if problem == "5*5=" else ["0", "0"])
    return out

  report = make_evaluator(c, tok, sets={"synthetic_heldout": qs}).run(generate, jax.random.key(0))
  groups = report["sets"]["synthetic_heldout"]["groups"]
  assert {g: (v["n"], v["accuracy"]) for g, v in groups.items()} == {
      "add": (2, 0.5), "sub": (1, 1.0), "(none)": (1, 0.5)}
  assert groups["add"]["stderr"] == pytest.approx(0.5)  # per-question accuracies 1 and 0
  flat = flat_metrics(report)
  assert flat["eval/synthetic_heldout/group/add"] == 0.5
  c.eval.group_by = ""
  report = make_evaluator(c, tok, sets={"synthetic_heldout": qs}).run(generate, jax.random.key(0))
  assert "groups" not in report["sets"]["synthetic_heldout"]


def test_evaluator_rejects_wrong_number_of_completions():
  tok = make_char_tokenizer()
  c = base_config()
  c.data.update(chat_template=False, max_prompt_tokens=12)
  c.eval.update(k=2, batch=8)
  ev = make_evaluator(c, tok, sets={"synthetic_heldout": _FakeSet("synthetic_heldout", [("1+1=", "2")])})
  with pytest.raises(ValueError, match="expected 2 per prompt"):
    ev.run(lambda prompts, k, rng: [["2"]] * len(prompts), jax.random.key(0))


def test_evaluate_checkpoint_end_to_end(tmp_path):
  """Real policy + Sampler on a tiny random checkpoint: the CLI's path, in-process (8 CPU devices)."""
  from hf_fixtures import make_tiny_hf_checkpoint

  from dots_jax.evaluate.__main__ import evaluate_checkpoint
  path = make_tiny_hf_checkpoint(tmp_path / "ckpt")
  c = base_config()
  c.data.update(train="synthetic", eval_sets=("synthetic_heldout",), chat_template=False,
                max_prompt_tokens=16, prompt_buckets=(16,), prepared_dir=str(tmp_path / "prepared"))
  c.data.synthetic.update(train_size=24, heldout_size=10)
  c.eval.update(k=2, temperature=1.0, max_new_tokens=4, batch=8)
  report = evaluate_checkpoint(c, path)
  m = report["sets"]["synthetic_heldout"]
  assert m["num_questions"] == 10 and m["k"] == 2
  assert sum(m["reward_reasons"].values()) == 20  # every sample was decoded and scored
  assert 0.0 <= m["avg@2"] <= m["pass@2"] <= 1.0
  assert report["model_path"] == path


def test_exact_scores_equal_the_samplers_log_probs_and_exact_eval_runs(tmp_path):
  """exact_fn(prompt, completion) is log p of that completion: it equals the summed per-token
  log-probs the sampler reported when it drew it (left padding, positions and EOS all line up, on
  the 8-device mesh); and the exact evaluation of a checkpoint reports exp of the target's log p."""
  from flax import nnx
  from hf_fixtures import make_tiny_hf_checkpoint

  from dots_jax.evaluate.__main__ import evaluate_checkpoint
  from dots_jax.exact import exact_logprob_fn
  from dots_jax.model.hf_io import load_policy, load_tokenizer
  from dots_jax.model.sharding import make_mesh
  from dots_jax.rollout.generator import Generator
  path = make_tiny_hf_checkpoint(tmp_path / "ckpt")
  c = base_config()
  c.data.update(train="synthetic", eval_sets=("synthetic_heldout",), chat_template=False,
                max_prompt_tokens=16, prompt_buckets=(16,), prepared_dir=str(tmp_path / "prepared"))
  c.data.synthetic.update(train_size=24, heldout_size=10)
  c.eval.update(k=2, temperature=1.0, max_new_tokens=4, batch=8, exact=True)
  mesh = make_mesh(c.mesh)
  qcfg, model = load_policy(path, mesh=mesh)
  tok = load_tokenizer(path)
  graphdef, params = nnx.split(model)
  prompts = [tok.encode(p, add_special_tokens=False) for p in ("12+3=", "7+8=", "99+1=", "5=")] * 2
  s = settings.read(c)
  generator = Generator(graphdef, qcfg, tok, prompt_buckets=s.data.prompt_buckets,
                        max_new_tokens=s.eval.max_new_tokens, mesh=mesh, engine=s.engine)
  out = generator.generate(params, prompts, 1, jax.random.key(3), s.eval.decoding)
  completions = [out.tokens_NxR[r, :out.lengths_N[r]].tolist() for r in range(len(prompts))]
  want = np.asarray([(out.logp_NxR[r] * out.mask_NxR[r]).sum() for r in range(len(prompts))])
  got = exact_logprob_fn(graphdef, params, length=16 + 4, batch=8, mesh=mesh)(prompts, completions)
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert got.shape == (8,) and np.all(got < 0)

  report = evaluate_checkpoint(c, path)
  m = report["sets"]["synthetic_heldout"]
  assert report["exact"] and m["exact"] and m["num_questions"] == 10 and m["k"] == 1
  assert 0.0 < m["avg@1"] <= m["pass@2"] < 1.0
  c.eval.temperature = 0.0
  with pytest.raises(ValueError, match="needs config.eval.temperature=1.0"):
    evaluate_checkpoint(c, path)
  c.eval.temperature, c.data.eval_sets = 1.0, ("math500",)
  with pytest.raises(ValueError, match="synthetic sets only"):
    make_evaluator(c, tok, sets={"math500": _FakeSet("math500", [("2+2?", "4")])})


def test_summarize_exact():
  from dots_jax.evaluate.scores import summarize_exact
  m = summarize_exact(np.array([0.0, 0.5, 1.0, 0.5]), k=4)
  assert m["avg@1"] == 0.5 and m["k"] == 1 and m["exact"]
  assert m["pass@2"] == pytest.approx((0 + 0.75 + 1 + 0.75) / 4)
  assert m["pass@4"] == pytest.approx((0 + 0.9375 + 1 + 0.9375) / 4)
  assert m["stderr"] == pytest.approx(np.std([0, 0.5, 1, 0.5], ddof=1) / 2)


def test_pack_completions_left_pads_and_names_the_row_too_long():
  from dots_jax.exact import pack_completions
  tok, mask, loss = pack_completions([[5, 6], [7]], [[1, 2], [3]], 5, rows=3)
  assert tok.tolist() == [[0, 5, 6, 1, 2], [0, 0, 0, 7, 3], [0] * 5]
  assert mask.tolist() == [[0, 1, 1, 1, 1], [0, 0, 0, 1, 1], [0] * 5]
  assert loss.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 1], [0] * 5]
  with pytest.raises(ValueError, match=r"exact row 1 needs 6 tokens > 5; raise it"):
    pack_completions([[1], [1, 2, 3]], [[1], [4, 5, 6]], 5, name=lambda i: f"exact row {i}",
                     hint="raise it")
