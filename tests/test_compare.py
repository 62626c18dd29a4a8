"""compare.py: time/rollouts to reach GRPO's final accuracy, ratios, table, plot, from metrics files."""
import json
import math
import os

import numpy as np
import pytest

from dots_jax import compare


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
  assert g["rollouts_to_ds_target"] == 200
  table = compare.markdown_table(result)
  assert "| dots_rr |" in table and "60%" in table and "never" in table and "0.75/0.88" in table
  compare.plot_curves({"grpo": {0: grpo}, "dots_rr": {0: fast}}, str(tmp_path / "c.png"))
  assert os.path.getsize(tmp_path / "c.png") > 1000


def test_main_analyze_only_writes_outputs(tmp_path):
  for seed in (0, 1):
    write_run(tmp_path, f"grpo_s{seed}", [0.1, 0.4], [0, 10], [0, 100])
    write_run(tmp_path, f"greso_s{seed}", [0.1, 0.45], [0, 6], [0, 40])
  result = compare.main(["--methods=grpo,greso", "--seeds=0,1", f"--workdir={tmp_path}",
                         "--analyze_only"])
  assert result["summary"]["greso"]["rollout_ratio"] == pytest.approx(0.4)
  for name in ("compare.json", "compare.md", "curves.png"):
    assert (tmp_path / name).exists()
  with open(tmp_path / "compare.json") as f:
    assert set(json.load(f)["runs"]) == {"grpo", "greso"}


def test_errors_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    compare.read_curve(str(tmp_path))
  run = write_run(tmp_path, "x", [0.1], [0], [0])
  with pytest.raises(ValueError, match="baseline 'grpo'"):
    compare.analyze({"dots": {0: compare.read_curve(run)}})
  with pytest.raises(SystemExit):
    compare.main(["--methods=dots", f"--workdir={tmp_path}", "--analyze_only"])
