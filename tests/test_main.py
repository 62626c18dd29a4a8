"""The main job: every method runs a few micro steps end to end and resumes; bad configs fail early."""
import json
import os

import jax
import numpy as np
import pytest

from config_files import load_config
from dots_jax import train
from dots_jax.config_common import ConfigError
from dots_jax.methods import METHODS
from dots_jax.tiny import tracking



@pytest.fixture(scope="module")
def cache(micro_cache):
  """The shared tiny base + prepared data, and a compilation cache for the module (conftest)."""
  return micro_cache


def micro(cache, arg: str = "", **overrides):
  c = load_config("tiny", "micro" + ("," + arg if arg else ""))
  c.tiny.cache_dir = str(cache / "tiny")
  c.data.prepared_dir = str(cache / "prepared")
  c.selection.dots.embed_path = str(cache / "embeddings")
  c.total_steps = 2
  for k, v in overrides.items():
    node = c
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return c


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs(cache, tmp_path, method):
  summary = train.train_and_evaluate(micro(cache, f"method={method}"), str(tmp_path))
  assert summary["method"] == method and summary["steps"] == 2
  records = read_metrics(tmp_path)
  assert [r["step"] for r in records] == [0, 1, 2]
  assert "eval/accuracy" in records[0] and "eval/accuracy" in records[-1]
  assert records[-1]["progress/rollouts"] == summary["rollouts"] >= 2 * 8 * 4
  assert records[-1]["replay/replayed_groups"] >= 0
  with open(tmp_path / "summary.json") as f:
    assert json.load(f)["rollouts"] == summary["rollouts"]
  # The synthetic task has exact pass rates: predictions on the trained batch (DOTS, the oracle,
  # MoPPS's posterior means) are scored against them; after a zero-variance filter the micro base's
  # batch can be empty, with nothing to score.
  m = METHODS[method]
  predicts = m.source in ("dots", "oracle", "track") or m.filter == "mopps"
  scored = "selection/pred_abs_err_exact" in records[1]
  assert ((not scored or predicts) if m.filter in ("ds", "greso", "greso_track")
          else scored == predicts)
  if scored:
    assert 0.0 <= records[1]["selection/pred_abs_err_exact"] <= 1.0
  # ... and every method's step against a uniform batch, in expected reward-variance groups
  assert 0.0 <= records[1]["selection/pool_signal_share_exact"] <= 1.0


def test_the_run_ends_by_saying_what_it_showed(cache, tmp_path, capsys):
  from dots_jax import main as entry
  from dots_jax.run import report
  summary = train.train_and_evaluate(micro(cache, "method=grpo"), str(tmp_path))
  out = capsys.readouterr().out.splitlines()
  done = out.index(next(line for line in out if line.startswith("== done: ")))
  tail = "\n".join(out[done:])
  records = read_metrics(tmp_path)
  first, last = records[0], records[-1]
  with np.load(tmp_path / "pass_rates" / "0.npz") as a, np.load(tmp_path / "pass_rates" / "2.npz") as b:
    d = b["synthetic_heldout"].astype(np.float64) - a["synthetic_heldout"]
  assert (f"{first['eval/accuracy']:.4f} +- {first['eval/stderr']:.4f} at step 0 -> "
          f"{last['eval/accuracy']:.4f} +- {last['eval/stderr']:.4f} at step 2: "
          f"{last['eval/accuracy'] - first['eval/accuracy']:+.4f} +- "
          f"{d.std(ddof=1) / np.sqrt(d.size):.4f} (paired over questions)") in tail
  assert f"grpo: 2/2 steps, {summary['rollouts']:,} rollouts" in out[done]
  assert f"{tmp_path}/metrics.jsonl" in tail and f"{tmp_path}/checkpoints (newest: step 2)" in tail
  # matplotlib is in the test extra: the learning curve is drawn
  assert (tmp_path / report.CURVE_FILE).stat().st_size > 0 and f"{tmp_path}/curve.png" in tail
  nxt = "\n".join(entry.next_commands(summary, "configs/tiny.py"))
  assert f"python -m dots_jax.tools.export --workdir={tmp_path} --out={tmp_path}_hf" in nxt
  assert f"python -m dots_jax.evaluate --workdir={tmp_path}" in nxt
  assert "python -m dots_jax.compare --config=configs/tiny.py --methods=grpo,dots_rr --seeds=0" in nxt


def test_tracking_report_reads_a_run(cache, tmp_path):
  train.train_and_evaluate(micro(cache, "method=grpo"), str(tmp_path))
  rows = tracking.analyze_run(str(tmp_path), draws=1, ref_factor=2)
  assert [r.step for r in rows] == [0, 2]
  with np.load(tmp_path / "pass_rates" / "2.npz") as z:
    assert rows[-1].mean_pass_rate == pytest.approx(float(z["synthetic"].mean()), rel=1e-5)
  assert all(0.0 <= r.structure_r2 <= 1.0 for r in rows)
  # The run kept a checkpoint of step 2 only: the policy's own embeddings are read there alone.
  assert np.isnan(rows[0].policy_ridge_r) and -1.0 <= rows[-1].policy_ridge_r <= 1.0
  b = rows[-1].block  # a round's block scored against the step's exact pass rates
  assert 0.0 <= b.signal_estimator <= 1.0 and 0.0 <= b.signal_exact <= 1.0 and 0.0 <= b.error <= 1.0
  assert 0.0 <= rows[-1].block_error_exact_refs <= 1.0
  assert 0.0 <= rows[-1].block_error_ridge  # a linear readout may predict outside [0, 1]
  assert 0.0 <= rows[-1].block_error_structure <= 1.0
  assert "| estimator r (8 refs, G=4)" in tracking.report(rows, 8, 16, 4)


def test_resume_continues_where_it_stopped(cache, tmp_path):
  first = train.train_and_evaluate(micro(cache, "method=dots_rr"), str(tmp_path))
  more = train.train_and_evaluate(micro(cache, "method=dots_rr", total_steps=4), str(tmp_path))
  records = read_metrics(tmp_path)
  assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
  assert more["rollouts"] > first["rollouts"]
  assert records[2]["progress/rollouts"] == first["rollouts"]
  # Finished runs resume to a no-op: nothing is recomputed.
  again = train.train_and_evaluate(micro(cache, "method=dots_rr", total_steps=4), str(tmp_path))
  assert again["rollouts"] == more["rollouts"] and len(read_metrics(tmp_path)) == 5


def test_kl_penalty_runs_against_the_initial_policy(cache, tmp_path):
  # kl_beta != 0 keeps a copy of the initial params as the reference; the first update starts at
  # the reference (KL 0), later ones have moved away from it. One mini-batch per step: the KL
  # metric is the step's mean over its mini-batches, and later ones have already moved.
  c = micro(cache, **{"rl.kl_beta": 0.1, "rl.lr": 1e-2, "rl.warmup_steps": 0, "total_steps": 3,
                      "rl.mini_batches": 1})
  train.train_and_evaluate(c, str(tmp_path))
  kl = [r["train/kl"] for r in read_metrics(tmp_path)[1:]]
  assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 1e-6


def test_unknown_method(cache, tmp_path):
  with pytest.raises(ConfigError, match="config.method='nope' is unknown"):
    train.train_and_evaluate(micro(cache, method="nope"), str(tmp_path))


def test_batch_not_divisible_by_mesh(cache, tmp_path):
  # conftest gives 8 devices; 12 questions do not split over 8 data-parallel shards.
  with pytest.raises(ConfigError, match="batch_questions=12 is not divisible.*multiple of 8"):
    train.train_and_evaluate(micro(cache, **{"rl.batch_questions": 12}), str(tmp_path))


def test_missing_checkpoint_dir(cache, tmp_path):
  with pytest.raises(ConfigError, match="is not a directory"):
    train.train_and_evaluate(micro(cache, **{"model.path": str(tmp_path / "absent")}),
                             str(tmp_path / "w"))


def test_model_not_qwen2(cache, tmp_path):
  ckpt = tmp_path / "llama"
  ckpt.mkdir()
  (ckpt / "config.json").write_text(json.dumps({"model_type": "llama",
                                                "architectures": ["LlamaForCausalLM"]}))
  with pytest.raises(ConfigError, match="model_type='llama'.*Qwen2"):
    train.train_and_evaluate(micro(cache, **{"model.path": str(ckpt)}), str(tmp_path / "w"))


def test_real_config_without_model_path(tmp_path):
  with pytest.raises(ConfigError, match="--config.model.path"):
    train.train_and_evaluate(load_config("qwen1p5b_math"), str(tmp_path))


def test_config_arg_parsing():
  c = load_config("qwen7b", "method=dots_rr,rl.lr=3e-6,data.eval_sets=math500+aime24")
  assert c.method == "dots_rr" and c.rl.lr == 3e-6 and c.data.eval_sets == ("math500", "aime24")
  with pytest.raises(ConfigError, match="unknown config preset"):
    load_config("tiny", "mikro")
  with pytest.raises(ConfigError, match="no key"):
    load_config("tiny", "rl.nope=1")


def dry_run(c, **plan_flags):
  """The job's dry run (`python -m dots_jax.tools.plan`) of config `c`, with the tool's flags."""
  from dots_jax.tools import plan
  flags = dict(topology="", device_gib=0.0, compile=False, device="", fit_margin=0.9)
  return plan.dry_run(c, plan.PlanSettings(**{**flags, **plan_flags}))


@pytest.mark.parametrize("name", ["qwen1p5b_math", "qwen3b", "qwen7b"])
def test_dry_run_plans_real_models_on_cpu(name, capsys):
  c = load_config(name, "method=dots_rr")
  c.mesh.update(data=2, fsdp=16, tensor=1)
  plan = dry_run(c)
  assert plan["mesh"] == {"data": 2, "fsdp": 16, "tensor": 1}
  assert plan["rows_per_step"] == 512 * 8
  assert 0 < plan["memory"]["params"] < plan["memory"]["total"]
  out = capsys.readouterr().out
  assert "per device" in out and "dots_rr (replay on)" in out


@pytest.mark.parametrize("name,mesh,device_gib", [
    ("qwen1p5b_math", dict(data=8, fsdp=1), 80), ("qwen7b", dict(data=1, fsdp=8), 141),
    ("qwen7b", dict(data=1, fsdp=32), 95)])
def test_reference_configs_fit_their_devices(name, mesh, device_gib, capsys):
  """The shipped slot and micro-batch settings fit the devices docs/MEMORY.md names (the planner's
  estimate per device); a device too small for the rollout's KV cache is refused in the verdict."""
  c = load_config(name, "method=dots_rr")
  c.mesh.update(tensor=1, **mesh)
  plan = dry_run(c, device_gib=device_gib)
  out = capsys.readouterr().out
  assert f"fits a {device_gib} GiB device" in out, out
  assert plan["estimated_peak"] <= device_gib * 2**30
  # Peak memory no longer grows with the step's rows: the slots bound the KV cache.
  assert plan["memory"]["rollout_kv_cache"] <= c.sampling.kv_budget_gib * 2**30
  dry_run(c, device_gib=plan["estimated_peak"] / 2**30 * 0.9)
  assert "does NOT fit" in capsys.readouterr().out


# The TPU slice presets: (config, preset, chips, HBM GiB per chip as the TPU compiler reports it).
SLICE_PRESETS = [("qwen7b", "v6e_8", 8, 31.25), ("qwen7b", "v5e_16", 16, 15.75),
                 ("qwen1p5b_math", "v6e_8", 8, 31.25), ("qwen1p5b_math", "v5e_8", 8, 15.75),
                 ("qwen1p5b_greso", "v6e_8", 8, 31.25), ("qwen1p5b_greso", "v5e_8", 8, 15.75)]


@pytest.mark.parametrize("name,preset,chips,hbm_gib", SLICE_PRESETS)
def test_slice_presets_use_the_slice_and_fit_by_the_estimate(name, preset, chips, hbm_gib, capsys):
  """Each preset's mesh is the slice's chips exactly and its plan fits one chip by the planner's
  estimate (the TPU compiler's figures, slower to get, are docs/MEMORY.md's rows)."""
  c = load_config(name, f"{preset},method=dots_rr" if name != "qwen1p5b_greso" else preset)
  assert c.mesh.data * c.mesh.fsdp * c.mesh.tensor == chips
  plan = dry_run(c, device_gib=hbm_gib)
  assert f"fits a {hbm_gib} GiB device" in capsys.readouterr().out
  assert plan["estimated_peak"] <= 0.9 * hbm_gib * 2**30


def test_reference_settings_match_dots_script():
  c = load_config("qwen1p5b_math")
  assert (c.rl.batch_questions, c.sampling.group_size, c.rl.lr, c.rl.schedule) == (512, 8, 1e-6,
                                                                                    "constant")
  assert (c.rl.weight_decay, c.rl.grad_clip, c.sampling.temperature) == (0.01, 1.0, 0.6)
  assert c.sampling.max_new_tokens == 3072 and c.model.variant == "Math-1.5B"
  d = c.selection.dots
  assert (d.ref_size, d.round_steps, d.alpha, d.tau) == (256, 2, 0.5, 1e-3)
  assert (c.replay.capacity, c.replay.fresh_fraction) == (512, 0.5)
  # The script's step structure, data set, prompt and estimator (docs/REPRODUCTION.md).
  assert (c.rl.mini_batches, c.rl.shuffle, c.total_steps) == (8, False, 60)
  assert (c.data.train, c.data.system_prompt, c.data.max_prompt_tokens) == ("deepscaler_10240",
                                                                          "dots", 1024)
  assert (d.width, d.layers, d.embed_max_len) == (896, 3, 0)
  assert (d.fit.ref_size, d.fit.batch, d.fit.epochs, d.fit.lr) == (256, 256, 20, 1e-3)


def test_reference_settings_match_greso_script():
  c = load_config("qwen1p5b_greso")
  assert (c.method, c.rl.batch_questions, c.rl.mini_batches, c.sampling.group_size) == (
      "greso", 256, 4, 8)
  assert (c.data.train, c.data.max_prompt_tokens, c.sampling.max_new_tokens) == (
      "dapo_math_17k+math_train", 1536, 2560)
  assert (c.sampling.temperature, c.rl.entropy_coef, c.reward.format_score, c.rl.lr) == (
      1.0, 0.001, 0.1, 1e-6)
  assert (c.selection.rounds.first * 256, c.selection.rounds.floor * 256) == (384, 64)


@pytest.mark.parametrize("name,method,expect", [
    ("qwen1p5b_math", "dots_rr", ["the first 2 steps train on 512 fresh questions",
                                  "then 256 fresh + up to 256 replayed groups",
                                  "256 reference questions x G=8 rolled out every 2 steps",
                                  "8 mini-batches of 64 questions x 1 epoch(s) = 8 optimizer steps"]),
    ("qwen1p5b_greso", "greso", ["round 1 = 384 questions that survive GRESO's skip",
                                 "adaptive in [64, 384] until 256 groups",
                                 "4 mini-batches of 64 questions x 1 epoch(s) = 4 optimizer steps"]),
    ("qwen1p5b_greso", "ds", ["round 1 = 384 questions x G=8"]),
])
def test_dry_run_prints_the_published_step_structure(name, method, expect, capsys):
  c = load_config(name, f"method={method}")
  plan = dry_run(c)
  out = capsys.readouterr().out
  for text in expect:
    assert text in out, (text, out)
  assert plan["step_structure"]["optimizer_steps"] == c.rl.mini_batches


def test_dry_run_compiles_pi_old_and_the_update(capsys):
  """--compile: both programs are lowered and compiled with shapes only; the last line gives the
  larger one's compiled bytes beside the planner's estimate."""
  import re
  c = load_config("tiny")
  plan = dry_run(c, compile=True)
  assert set(plan["programs"]) == {"pi_old", "update"}
  assert all(p["compiled"] > 0 and p["estimated"] > 0 for p in plan["programs"].values())
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert re.fullmatch(r"peak per device: \d+\.\d\d GiB compiled, \d+\.\d\d GiB estimated", last)


def test_pool_pass_rates_equal_the_exact_evaluation_of_the_pool(cache):
  """The truth the driver scores predictions against (and the oracle selects with) is the exact
  evaluation's pass rate of the same questions."""
  from flax import nnx

  from dots_jax.data.dataset import load_dataset
  from dots_jax.data.prompts import PromptTable
  from dots_jax.evaluate.benchmarks import Evaluator
  from dots_jax.evaluate.pool_rates import PoolPassRates
  from dots_jax.exact import exact_logprob_fn
  from dots_jax.model.hf_io import load_policy, load_tokenizer
  from dots_jax.policy import policy_path
  from dots_jax.run import settings
  c = micro(cache)
  s = settings.read(c)
  path = policy_path(s.model.path, s.tiny, log=lambda _: None)
  tokenizer = load_tokenizer(path)
  _, model = load_policy(path)
  graphdef, params = nnx.split(model)
  prompts = PromptTable(tokenizer, s.data, load_dataset(s.data, "train"))
  length = max(s.data.prompt_buckets) + s.decoding.max_new_tokens
  rates = PoolPassRates(tokenizer, prompts, graphdef, train_set=s.data.train, length=length,
                        rows=s.batch_questions).at(params)
  evaluator = Evaluator(tokenizer, s.data, s.eval, s.reward)
  evaluator.run(None, jax.random.key(0), exact=exact_logprob_fn(
      graphdef, params, length=max(s.data.prompt_buckets) + s.eval.max_new_tokens,
      batch=s.eval.batch))
  want = evaluator.pass_rates["synthetic"]
  got = rates(np.arange(len(want)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert 0.0 < got.mean() < 1.0
  # no exact pass rates to score with: refused by name where required
  assert not PoolPassRates.available(s.data.train, exact_eval=False)
  with pytest.raises(ConfigError, match="eval.exact"):
    PoolPassRates.require("oracle", s.data.train, exact_eval=False)
