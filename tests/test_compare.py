"""compare.py: time/rollouts to reach GRPO's final accuracy, ratios, table, plot, from metrics files."""
import json
import math
import os

import numpy as np
import pytest

from dots_jax import compare
from dots_jax.run.workdir import commit_config
from config_files import load_config


def write_run(root, name, accs, secs, rolls, effective=None):
  d = root / name
  d.mkdir()
  effective = effective or [0.5] * len(accs)
  with open(d / "metrics.jsonl", "w") as f:
    for i, (a, s, r, e) in enumerate(zip(accs, secs, rolls, effective)):
      # training records carry the batch's effective (non-zero-variance) share; eval records the rest
      f.write(json.dumps({"step": 10 * i, "train/loss": 0.1, "selection/effective_frac": e}) + "\n")
      f.write(json.dumps({"step": 10 * i, "eval/accuracy": a, "eval/stderr": 0.01,
                          "progress/seconds": s, "progress/rollouts": r}) + "\n")
  return str(d)


def test_analysis_against_same_seed_grpo(tmp_path):
  grpo = compare.read_curve(write_run(tmp_path, "g", [0.1, 0.3, 0.5, 0.5], [0, 10, 20, 30],
                                      [0, 100, 200, 300], effective=[0.25, 0.5, 0.5, 0.125]))
  fast = compare.read_curve(write_run(tmp_path, "f", [0.1, 0.5, 0.6, 0.6], [0, 8, 16, 24],
                                      [0, 60, 120, 180]))
  never = compare.read_curve(write_run(tmp_path, "n", [0.1, 0.2, 0.3, 0.4], [0, 5, 10, 15],
                                       [0, 50, 100, 150]))
  result = compare.analyze({"grpo": {0: grpo}, "dots_rr": {0: fast}, "ds": {0: never}})
  g, f, n = (result["runs"][m]["0"] for m in ("grpo", "dots_rr", "ds"))
  assert g["target"] == 0.5 and g["seconds_to_target"] == 20 and g["time_ratio"] == 1.0
  assert g["zero_var_first"] == 0.75 and g["zero_var_last"] == 0.875  # first/last tenth: 1 step
  assert f["seconds_to_target"] == 8 and f["rollouts_to_target"] == 60
  assert f["time_ratio"] == pytest.approx(0.4) and f["rollout_ratio"] == pytest.approx(0.3)
  assert math.isnan(n["seconds_to_target"])
  s = result["summary"]
  assert s["dots_rr"]["time_saving_pct"] == pytest.approx(60.0)
  # GRESO's comparison: rollouts to reach dynamic sampling's final accuracy (0.4, at 150 rollouts).
  assert n["ds_target"] == 0.4 and n["rollouts_vs_ds"] == 1.0
  assert f["rollouts_to_ds_target"] == 60 and s["dots_rr"]["rollouts_vs_ds"] == pytest.approx(0.4)
  # and the seconds: 8 against dynamic sampling's own 15
  assert s["dots_rr"]["seconds_vs_ds"] == pytest.approx(8 / 15)
  assert g["rollouts_to_ds_target"] == 200
  table = compare.markdown_table(result)
  assert "| dots_rr |" in table and "60 (0.30, 0.30)" in table and "| 0.40 (0.40) |" in table
  assert "never" in table and "0.75/0.88" in table
  compare.plot_curves({"grpo": {0: grpo}, "dots_rr": {0: fast}}, str(tmp_path / "c.png"))
  assert os.path.getsize(tmp_path / "c.png") > 1000


def test_seeds_of_their_own_worlds_target_the_baseline_final_itself(tmp_path):
  """The simulator's seeds are worlds of their own: their spread is not noise a method could flip,
  so the target is the same seed's GRPO final, not less one seed-to-seed standard error."""
  curves = {"grpo": {}, "dots_rr": {}}
  for s, top in enumerate((0.5, 0.7)):
    curves["grpo"][s] = compare.read_curve(write_run(
        tmp_path, f"g{s}", [0.1, top - 0.05, top], [0, 10, 20], [0, 100, 200]))
    curves["dots_rr"][s] = compare.read_curve(write_run(
        tmp_path, f"d{s}", [0.1, top - 0.01, top], [0, 10, 20], [0, 50, 100]))
  shared = compare.analyze(curves, testbed=False)
  own = compare.analyze(curves, testbed=False, seeds_share_a_pool=False)
  assert shared["runs"]["grpo"]["0"]["target"] == pytest.approx(0.5 - 0.1)  # se of 0.5, 0.7
  assert own["runs"]["grpo"]["0"]["target"] == 0.5
  assert own["runs"]["dots_rr"]["1"]["rollouts_to_target"] == 100
  assert shared["runs"]["dots_rr"]["1"]["rollouts_to_target"] < 100


def test_main_analyze_only_writes_outputs(tmp_path):
  for seed in (0, 1):
    write_run(tmp_path, f"grpo_s{seed}", [0.1, 0.4], [0, 10], [0, 100])
    write_run(tmp_path, f"greso_s{seed}", [0.1, 0.45], [0, 6], [0, 40])
  # The runs' recorded config gives G and the pool/held-out overlap of the testbed block.
  commit_config(load_config("tiny", "micro"), str(tmp_path / "grpo_s0"))
  result = compare.compare("configs/tiny.py", ["grpo", "greso"], [0, 1], str(tmp_path),
                           analyze_only=True)
  assert result["summary"]["greso"]["rollout_ratio"] == pytest.approx(0.4)
  for name in ("compare.json", "compare.md", "curves.png"):
    assert (tmp_path / name).exists()
  with open(tmp_path / "compare.json") as f:
    saved = json.load(f)
  assert set(saved["runs"]) == {"grpo", "greso"}
  assert saved["testbed"]["pool_heldout_overlap"] == {**saved["testbed"]["pool_heldout_overlap"],
                                                      "value": 0.0, "pass": True}


def test_errors_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    compare.read_curve(str(tmp_path))
  run = write_run(tmp_path, "x", [0.1], [0], [0])
  with pytest.raises(ValueError, match="baseline 'grpo'"):
    compare.analyze({"dots": {0: compare.read_curve(run)}})
  with pytest.raises(ValueError, match="baseline 'grpo'"):
    compare.compare("configs/tiny.py", ["dots"], [0], str(tmp_path), analyze_only=True)


def write_testbed_run(root, name, accs, rolls, pool_accs, *, pred_err=None, pred_err_exact=None,
                      zero_var=0.5, pass_first=None, pass_last=None, pearson=None, signal=None,
                      pool_signal=None, undrawn=None, families=None):
  """A run with everything the testbed/goals blocks read: per-step selection and timing metrics,
  evaluations of the held-out set and the pool, and per-question pass rates at the first and last
  evaluation."""
  d = root / name
  d.mkdir()
  with open(d / "metrics.jsonl", "w") as f:
    for i, (a, r, pa) in enumerate(zip(accs, rolls, pool_accs)):
      if i:
        f.write(json.dumps({"step": 10 * i, "selection/effective_frac": 1 - zero_var,
                            "selection/pred_abs_err": pred_err if pred_err is not None else None,
                            "selection/pred_abs_err_exact": pred_err_exact,
                            "selection/pred_pearson_exact": (pearson[i - 1] if pearson is not None
                                                             else None),
                            "selection/pred_pearson_undrawn_exact": (undrawn[i - 1] if undrawn
                                                                     is not None else None),
                            "selection/signal_share_exact": signal,
                            "selection/pool_signal_share_exact": pool_signal,
                            "time/rollout_s": 0.1, "time/update_s": 0.5,
                            "progress/distinct_questions": 40.0 * i}).replace("null", "NaN") + "\n")
      fam = {f"eval/synthetic_heldout/group/{k}": v[i] for k, v in (families or {}).items()}
      f.write(json.dumps({"step": 10 * i, "eval/accuracy": a, "eval/stderr": 0.01,
                          "eval/synthetic/avg@1": pa, "progress/seconds": float(i),
                          "progress/rollouts": r, **fam}) + "\n")
  if pass_first is not None:
    (d / "pass_rates").mkdir()
    last = 10 * (len(accs) - 1)
    for step, p in ((0, pass_first), (last, pass_last)):
      np.savez(d / "pass_rates" / f"{step}.npz", synthetic_heldout=p, synthetic=p)
  return compare.read_curve(str(d))


def test_testbed_and_goals_blocks_are_computed_from_the_runs(tmp_path):
  p0 = np.array([0.0, 0.05, 0.5, 0.95, 1.0, 0.3])
  p1 = np.array([0.0, 0.40, 0.9, 1.0, 1.0, 0.4])  # moved by >= 0.25: 2 of 6
  rolls = [0, 100, 200, 300, 400]
  curves = {"grpo": {}, "dots": {}, "dots_rr": {}, "ds": {}, "greso": {}}
  for s, final in enumerate((0.60, 0.61, 0.62)):
    curves["grpo"][s] = write_testbed_run(
        tmp_path, f"grpo_{s}", [0.4, 0.5, 0.55, 0.58, final], rolls, [0.4, 0.5, 0.55, 0.58, final],
        zero_var=0.7, pass_first=p0, pass_last=p1)
    # one training step between evaluations here, so every step's r is an evaluation's
    curves["dots"][s] = write_testbed_run(tmp_path, f"dots_{s}", [0.4, 0.6, 0.62, 0.63, 0.64],
                                          rolls, [0.4] * 5, pred_err=0.1 + 0.01 * s,
                                          pearson=[0.9, 0.8, 0.7 - 0.02 * s, 0.75],
                                          signal=0.6, pool_signal=0.4 - 0.02 * s)
    curves["dots_rr"][s] = write_testbed_run(tmp_path, f"rr_{s}", [0.4, 0.65, 0.7, 0.7, 0.7],
                                             [0, 50, 100, 150, 200], [0.4] * 5)
    curves["ds"][s] = write_testbed_run(tmp_path, f"ds_{s}", [0.4, 0.5, 0.6, 0.65, 0.7],
                                        [0, 200, 400, 600, 800], [0.4] * 5)
    curves["greso"][s] = write_testbed_run(tmp_path, f"greso_{s}", [0.4, 0.5, 0.7, 0.7, 0.7],
                                           [0, 150, 300, 450, 600], [0.4] * 5)
  result = compare.analyze(curves, group_size=8, overlap=0.0)
  tb, goals = result["testbed"], result["goals"]
  # Base figures: the expected zero-variance share is the mean of p^G + (1-p)^G over the pool.
  assert tb["zero_var_start"]["value"] == pytest.approx(np.mean(p0 ** 8 + (1 - p0) ** 8))
  assert tb["all_wrong_start"]["value"] == pytest.approx(np.mean((1 - p0) ** 8))
  assert tb["mid_pass_share"]["value"] == pytest.approx(2 / 6)
  assert tb["pool_heldout_overlap"]["pass"]
  assert tb["grpo_gain"]["value"] == pytest.approx(0.21)
  assert tb["grpo_gain_over_seed_sd"]["value"] == pytest.approx(0.21 / 0.01)
  # Last third of steps 0..40 starts at 26.67: accuracy there 0.55 + 0.03 * 2/3 = 0.57.
  assert tb["grpo_late_gain_share"]["value"] == pytest.approx((0.60 - 0.57) / 0.20)
  assert tb["heldout_vs_pool_gain"]["value"] == pytest.approx(1.0)
  assert tb["moved_heldout_questions"]["value"] == pytest.approx(2 / 6)
  assert tb["grpo_zero_var_end"]["value"] == pytest.approx(0.7)
  # The worst seed's lowest r (seed 2: 0.66) and its batch-over-uniform signal share (0.6 / 0.4
  # on seed 0 is the lowest ratio); the batch error is reported beside them, no longer a bar.
  assert tb["dots_estimator_pearson"]["value"] == pytest.approx(0.66) and tb["dots_estimator_pearson"]["pass"]
  assert tb["dots_signal_share_ratio"]["value"] == pytest.approx(1.5) and tb["dots_signal_share_ratio"]["pass"]
  assert tb["dots_estimator_pearson"]["tracking_error_observed"] == pytest.approx(0.11)
  assert "dots_tracking_error" not in tb
  # Goals: DOTS+RR reaches GRPO's final (step 40, 400 rollouts) at 50 rollouts -> 0.125 worst seed;
  # DOTS reaches 0.60 / 0.61 / 0.62 at step 10 / 20 / 20 -> worst 20 / 40.
  assert goals["dots_rr_rollout_ratio"]["value"] == pytest.approx(50 / 400)
  assert goals["dots_step_ratio"]["value"] == pytest.approx(0.5) and goals["dots_step_ratio"]["pass"]
  assert goals["greso_rollouts_vs_ds"]["value"] == pytest.approx(300 / 800)
  # The equal-step margin on the worst seed: DOTS's 0.64 against seed 2's GRPO final 0.62 less
  # the seed-to-seed standard error of GRPO's finals (what "reaching" GRPO means: noise between
  # seeds cannot flip it).
  se = np.std([0.60, 0.61, 0.62], ddof=1) / np.sqrt(3)
  assert result["baseline_seed_se"] == pytest.approx(se)
  assert goals["dots_equal_step_margin"]["value"] == pytest.approx(0.64 - (0.62 - se))
  assert result["summary"]["grpo"]["distinct_questions"] == 160
  assert result["summary"]["dots"]["update_s_per_step"] == pytest.approx(0.5)
  table = compare.markdown_table(result)
  assert "testbed:" in table and "goals: 5/12 pass" in table  # the tracking methods did not run
  assert all(goals[g]["pass"] for g in ("dots_step_ratio", "dots_rr_rollout_ratio",
                                        "dots_equal_step_margin", "dots_rr_equal_step_margin",
                                        "greso_rollouts_vs_ds"))
  assert np.isnan(goals["dots_track_step_ratio"]["value"])
  # A different run gives different blocks: nothing is written in.
  curves["dots"][0] = write_testbed_run(tmp_path, "dots_slow", [0.4, 0.45, 0.5, 0.55, 0.58],
                                        rolls, [0.4] * 5, pred_err=0.3)
  worse = compare.analyze(curves, group_size=8, overlap=3.0)
  assert not worse["goals"]["dots_step_ratio"]["pass"]  # never reached on seed 0: NaN fails
  assert not worse["testbed"]["dots_estimator_pearson"]["pass"]  # not measured on seed 0: NaN
  assert not worse["testbed"]["dots_signal_share_ratio"]["pass"]
  assert not worse["testbed"]["pool_heldout_overlap"]["pass"]
  # Where the runs logged the error against exact pass rates, the bar reads it (the observed pass
  # rate's binomial noise is not the estimator's); the observed one is kept beside it.
  curves["dots"] = {s: write_testbed_run(tmp_path, f"dots_exact_{s}", [0.4, 0.6, 0.62, 0.63, 0.64],
                                         rolls, [0.4] * 5, pred_err=0.3, pred_err_exact=0.05 * (s + 1))
                    for s in range(3)}
  exact = compare.analyze(curves, group_size=8, overlap=0.0)
  assert exact["testbed"]["dots_estimator_pearson"]["tracking_error_exact"] == pytest.approx(0.1)
  assert exact["testbed"]["dots_estimator_pearson"]["tracking_error_observed"] == pytest.approx(0.3)
  assert exact["summary"]["dots"]["tracking_error_exact"] == pytest.approx(0.1)
  # a DOTS batch no more informative than a uniform one fails the signal bar
  curves["dots"] = {s: write_testbed_run(tmp_path, f"dots_flat_{s}", [0.4, 0.6, 0.62, 0.63, 0.64],
                                         rolls, [0.4] * 5, pearson=[0.9] * 4, signal=0.5,
                                         pool_signal=0.45) for s in range(3)}
  flat = compare.analyze(curves, group_size=8, overlap=0.0)["testbed"]
  assert flat["dots_signal_share_ratio"]["value"] == pytest.approx(0.5 / 0.45)
  assert not flat["dots_signal_share_ratio"]["pass"] and flat["dots_estimator_pearson"]["pass"]


def test_tracking_diagnostics_and_goals(tmp_path):
  """Per run: the lowest Pearson r over undrawn questions, the trained groups' reward-variance
  share against the oracle's, the held-out family furthest below GRPO's at GRPO's last step; a
  cheaper method's run that went on past GRPO's steps is read at GRPO's steps and at its end."""
  rolls = [0, 100, 200, 300, 400]
  fam = lambda a, b: {"add": [0.5, 0.6, 0.7, 0.8, a], "sub": [0.5, 0.5, 0.6, 0.6, b]}
  curves = {"grpo": {}, "oracle": {}, "dots_track": {}, "dots_track_rr": {}}
  for s in range(2):
    curves["grpo"][s] = write_testbed_run(tmp_path, f"g{s}", [0.4, 0.5, 0.55, 0.58, 0.60 + 0.01 * s],
                                          rolls, [0.4] * 5, signal=0.5, families=fam(0.8, 0.6))
    curves["oracle"][s] = write_testbed_run(tmp_path, f"o{s}", [0.4, 0.5, 0.6, 0.62, 0.64],
                                            rolls, [0.4] * 5, signal=0.8, pearson=[1.0] * 4)
    curves["dots_track"][s] = write_testbed_run(
        tmp_path, f"t{s}", [0.4, 0.55, 0.62, 0.63, 0.64], rolls, [0.4] * 5, signal=0.6,
        pearson=[0.9, 0.8, 0.8, 0.7], undrawn=[0.9, 0.65 - 0.05 * s, 0.8, 0.7],
        families=fam(0.85, 0.55))
    # Half GRPO's rollouts a step, run on to GRPO's 400 rollouts: steps 0..80.
    curves["dots_track_rr"][s] = write_testbed_run(
        tmp_path, f"r{s}", [0.4, 0.45, 0.5, 0.55, 0.58, 0.6, 0.61, 0.62, 0.63],
        [0, 50, 100, 150, 200, 250, 300, 350, 400], [0.4] * 9, pearson=[0.9] * 8,
        undrawn=[0.7] * 8)
  result = compare.analyze(curves, testbed=False)
  t, rr = result["summary"]["dots_track"], result["runs"]["dots_track_rr"]["0"]
  assert t["undrawn_pearson_min"] == pytest.approx(0.6)  # seed 1's 0.60 at step 20
  assert t["signal_share_vs_oracle"] == pytest.approx(0.6 / 0.8)
  assert result["runs"]["dots_track"]["0"]["worst_family"] == "sub"
  assert t["worst_family_shortfall"] == pytest.approx(0.05)
  assert rr["final_accuracy"] == pytest.approx(0.58) and rr["end_accuracy"] == 0.63
  assert rr["end_step"] == 80 and rr["rollouts_per_step_ratio"] == pytest.approx(0.5)
  # seed 0's target 0.60 - se: reached at step 50 with 250 rollouts, GRPO's at step 40 with 400
  assert rr["step_ratio"] == pytest.approx(50 / 40) and rr["rollout_ratio"] == pytest.approx(250 / 400)
  goals = result["goals"]
  assert goals["dots_track_undrawn_pearson"]["value"] == pytest.approx(0.6)
  assert goals["dots_track_undrawn_pearson"]["pass"]
  assert goals["dots_track_rr_rollout_ratio"]["value"] == pytest.approx(result["summary"][
      "dots_track_rr"]["rollout_ratio_worst"])
  assert not goals["dots_track_rr_equal_step_margin"]["pass"]  # 0.58 at GRPO's steps < 0.60 - se


def test_a_cheaper_run_goes_on_until_it_spent_the_baselines_rollouts(tmp_path, monkeypatch):
  """`extend_to_budget` resumes the run with more steps until its rollouts reach the budget."""
  calls = []
  state = {"steps": 40, "per_step": 5.0}

  def fake_run(config, overrides, method, seed, run_dir):
    calls.append(overrides[-1])
    state["steps"] = int(overrides[-1].split("=")[1])

  def fake_curve(run_dir):
    steps = np.arange(0, state["steps"] + 1, 10, dtype=float)
    return {"step": steps, "rollouts": steps * state["per_step"]}

  monkeypatch.setattr(compare, "run_one", fake_run)
  monkeypatch.setattr(compare, "read_curve", fake_curve)
  compare.extend_to_budget("configs/tiny.py", [], "dots_track_rr", 0, "w", budget=400.0)
  assert calls == ["--config.total_steps=80"]  # 200 rollouts in 40 steps: 40 more for 400
  calls.clear()
  compare.extend_to_budget("configs/tiny.py", [], "dots_track_rr", 0, "w", budget=400.0)
  assert calls == []  # spent: nothing more
