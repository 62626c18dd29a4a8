"""The selection simulator: its pass-rate model, its statistics' arithmetic, that it drives the
trainer's own strategy code, and the statistics it is calibrated to, measured on its own output."""

import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dots_jax import compare
from dots_jax.config_base import base_config
from dots_jax.rl import replay
from dots_jax.selection import base as selection_base, dots, greso, mopps, uniform
from dots_jax.sim import run as sim_run
from dots_jax.sim.stats import temporal_consistency, visit_pairs
from dots_jax.sim.settings import sim_config
from dots_jax.sim.world import PassRateWorld, WorldParams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_sim():
  """A scaled-down world: 2000 questions; a few hundred steps move as far as a reference run's
  thousand."""
  sim = sim_config()
  sim.update(questions=2000, heldout=500, skill_lr=0.1)
  return sim


def simulate(config):
  return sim_run.simulate(config, small_sim())


def small_config(method="grpo", seed=0, steps=40):
  """A scaled-down run: 64 questions a step, a small estimator fitted quickly."""
  c = base_config()
  c.method, c.seed, c.total_steps = method, seed, steps
  c.rl.batch_questions = 64
  c.replay.capacity = 64
  d = c.selection.dots
  d.update(ref_size=64, round_steps=2, width=64, layers=2, chunk=4096)
  d.fit.update(pool=1024, heldout=256, group=16, steps=150, batch=64, ref_size=64, warmup=10)
  return c


def world_params(**kw):
  sim = sim_config()
  sim.update(kw)
  return WorldParams.from_config(sim)


# ----- the statistics' arithmetic, on hand-made visits -----

def test_visit_pairs_follow_each_question_in_step_order():
  qid = np.array([1, 0, 1, 0, 1])
  step = np.array([5, 0, 1, 3, 9])
  zv = np.array([False, True, True, False, True])
  q, before, after = visit_pairs(qid, step, zv)
  # q0: steps 0 (T), 3 (F); q1: steps 1 (T), 5 (F), 9 (T)
  assert q.tolist() == [0, 1, 1]
  assert before.tolist() == [True, True, False]
  assert after.tolist() == [False, False, True]


def test_temporal_consistency_shares():
  # q0: Z Z Z; q1: Z I; q2: I I Z; q3: I Z I
  seqs = {0: "ZZZ", 1: "ZI", 2: "IIZ", 3: "IZI"}
  qid, step, zv = [], [], []
  for q, s in seqs.items():
    for t, ch in enumerate(s):
      qid.append(q), step.append(t), zv.append(ch == "Z")
  out = temporal_consistency(np.array(qid), np.array(step), np.array(zv))
  # pairs (before, after): q0 ZZ ZZ; q1 ZI; q2 II IZ; q3 IZ ZI
  # after == Z: q0 x2 (before Z, Z), q2 IZ, q3 IZ -> 2 of 4 had Z before
  assert out["zero_var_was_zero_var"] == pytest.approx(2 / 4)
  # before == Z: q0 x2 (-> Z, Z), q1 (-> I), q3 ZI (-> I) -> 2 of 4 revive next
  assert out["zero_var_revives_next"] == pytest.approx(2 / 4)
  # questions with a zero-variance visit followed by a later one: q0, q1, q3 (q2's Z is last);
  # revived later: q1, q3
  assert out["zero_var_revives_ever"] == pytest.approx(2 / 3)
  # before == I: q2 II, q2 IZ, q3 IZ -> 1 of 3 stays informative
  assert out["informative_stays"] == pytest.approx(1 / 3)


# ----- the pass-rate model -----

def test_zero_variance_groups_teach_nothing_and_teaching_moves_shared_skills():
  w = PassRateWorld(world_params(drift_sd=0.0), 300, 100, seed=0)
  before = w.pass_rates(np.arange(400))
  w.learn(np.arange(20), np.zeros(20, bool), np.ones(20))
  np.testing.assert_array_equal(w.pass_rates(np.arange(400)), before)
  w.learn(np.arange(20), np.ones(20, bool), np.ones(20))
  after = w.pass_rates(np.arange(400))
  assert np.all(after >= before - 1e-12)
  # Held-out questions were never trained on; they gain through the skills they share.
  held = w.heldout_indices()
  assert after[held].mean() > before[held].mean()


def test_a_stale_replayed_group_teaches_less():
  gains = []
  for weight in (1.0, 0.8 ** 3):
    w = PassRateWorld(world_params(drift_sd=0.0, question_lr=0.0), 300, 100, seed=0)
    p0 = w.pass_rates(w.heldout_indices()).mean()
    w.learn(np.arange(5), np.ones(5, bool), np.full(5, weight))
    gains.append(w.pass_rates(w.heldout_indices()).mean() - p0)
  assert gains[0] > gains[1] > 0


def test_bad_world_parameters_are_refused():
  with pytest.raises(ValueError, match="sim.replay_decay"):
    world_params(replay_decay=1.5)
  with pytest.raises(ValueError, match="max_skills"):
    world_params(max_skills=40)


# ----- it runs the trainer's strategy code, not a copy -----

def test_the_simulator_calls_the_trainers_strategies_and_replay(monkeypatch):
  called = set()

  def spy(cls, name):
    real = getattr(cls, name)

    def wrapper(self, *a, **k):
      called.add(f"{cls.__name__}.{name}")
      return real(self, *a, **k)
    monkeypatch.setattr(cls, name, wrapper)

  spy(uniform.UniformStrategy, "_propose")
  spy(uniform.DynamicSamplingStrategy, "_observe")
  spy(greso.GresoStrategy, "_observe")
  spy(mopps.MoppsStrategy, "_observe")
  spy(dots.DotsSource, "observe_prelude")
  spy(selection_base.EpochStream, "take")
  spy(replay.ReplayBuffer, "mix")
  for method in ("grpo", "ds", "greso", "mopps", "dots_rr"):
    simulate(small_config(method, steps=4))
  assert called == {"UniformStrategy._propose", "DynamicSamplingStrategy._observe",
                    "GresoStrategy._observe", "MoppsStrategy._observe",
                    "DotsSource.observe_prelude", "EpochStream.take", "ReplayBuffer.mix"}
  # Nothing in the simulator is a strategy or a candidate source of its own.
  import dots_jax.sim.run, dots_jax.sim.world, dots_jax.sim.stats
  for mod in (dots_jax.sim.run, dots_jax.sim.world, dots_jax.sim.stats):
    for _, obj in inspect.getmembers(mod, inspect.isclass):
      if obj.__module__ == mod.__name__:
        assert not issubclass(obj, selection_base.Strategy), obj
        assert not hasattr(obj, "propose") and not hasattr(obj, "take"), obj


# ----- the statistics it is calibrated to, measured on its own output -----

@pytest.fixture(scope="module")
def runs():
  return {m: simulate(small_config(m, steps=steps))
          for m, steps in (("grpo", 300), ("ds", 300), ("dots", 40))}


def test_zero_variance_stays_zero_variance_and_the_share_rises(runs):
  for method in ("grpo", "ds"):
    v = runs[method].visits
    tc = temporal_consistency(v.qid, v.step, v.zero_var)
    assert 0.8 <= tc["zero_var_was_zero_var"] <= 0.97, (method, tc)
    assert 0.05 <= tc["zero_var_revives_next"] <= 0.35, (method, tc)
  g = runs["grpo"].curve
  assert compare.zero_var_share(g, "last") > compare.zero_var_share(g, "first") + 0.015
  assert g["accuracy"][-1] > g["accuracy"][0] + 0.1


def test_the_estimator_predicts_content_difficulty_about_as_the_paper_measured(runs):
  est = runs["dots"].estimator
  assert 0.55 <= est["heldout_pearson_observed"] <= 0.85, est
  assert est["tracking_pearson_min"] >= 0.5, est


def test_selection_buys_what_it_should(runs):
  # DOTS trains on more groups with reward variance than uniform GRPO; DS only on such groups.
  zv = {m: float(np.mean(r.curve["zero_var"])) for m, r in runs.items()}
  assert zv["dots"] < zv["grpo"] - 0.1, zv
  assert zv["ds"] == 0.0
  assert runs["ds"].curve["rollouts"][-1] > runs["grpo"].curve["rollouts"][-1]


def test_the_command_writes_the_report_and_a_sweep(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  common = [sys.executable, "-m", "dots_jax.sim", "--config=configs/tiny.py",
            "--config.total_steps=6", "--sim.questions=1000", "--sim.heldout=200",
            # the calibration's estimator fit, small
            "--config.selection.dots.fit.steps=30", "--config.selection.dots.fit.pool=512",
            "--config.selection.dots.width=32", "--seeds=0,1"]
  out = tmp_path / "report"
  subprocess.run(common + ["--methods=grpo,ds,greso", f"--out={out}"], cwd=ROOT, env=env,
                 check=True, capture_output=True)
  table = (out / "compare.md").read_text()
  assert "| greso |" in table and "zero_var_was_zero_var" in table
  assert (out / "curves.png").stat().st_size > 0
  sweep = tmp_path / "sweep"
  proc = subprocess.run(common + ["--methods=grpo,ds", "--sweep=selection.rounds.first=1.5+2.0",
                                  f"--out={sweep}"], cwd=ROOT, env=env, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = (sweep / "sweep.md").read_text().splitlines()
  assert rows[0].startswith("| selection.rounds.first | method |")
  assert sum(r.startswith("| 1.5 |") for r in rows) == 2 and sum(r.startswith("| 2.0 |") for r in rows) == 2


def test_bad_flags_are_one_line_errors():
  from dots_jax.sim import __main__ as sim_main
  sim = small_sim()
  for methods, sweep, says in ((["grpo", "foo"], "", "--methods: unknown ['foo']"),
                               (["ds"], "", "must include the baseline 'grpo'"),
                               (["grpo"], "selection.dots.tau", "expected KEY=V1+V2+...")):
    with pytest.raises(ValueError, match=re.escape(says)):
      sim_main._check(sim, methods, sweep)
  proc = subprocess.run([sys.executable, "-m", "dots_jax.sim", "--config=configs/tiny.py",
                         "--sim.replay_decay=2"], cwd=ROOT,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == ("dots_jax.sim: sim.replay_decay must be in "
                                                  "[0, 1], got 2.0")
