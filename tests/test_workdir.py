"""What a run directory gives back: its config (checked on resume), an exported Hugging Face policy
that transformers loads with the same logits, and evaluation of a checkpoint."""

import json
import os
import re

import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from config_files import load_config
from dots_jax.run import settings
from dots_jax.run.settings import data_settings
from dots_jax import train
from dots_jax.evaluate import __main__ as evaluate
from dots_jax.config_common import ConfigError
from dots_jax.model import qwen2
from dots_jax.tools import export
from dots_jax.run.workdir import config_changes, load_trained, read_config


@pytest.fixture(scope="module")
def run(micro_cache, tmp_path_factory):
  """One finished micro GRPO run of 2 steps (checkpoint at step 2), on the shared micro base."""
  workdir = tmp_path_factory.mktemp("workdir") / "run"
  train.train_and_evaluate(micro(micro_cache), str(workdir))
  return micro_cache, str(workdir)


def micro(root, **rl):
  c = load_config("tiny", "micro")
  c.tiny.cache_dir = str(root / "tiny")
  c.data.prepared_dir = str(root / "prepared")
  c.total_steps = 2
  for k, v in rl.items():
    c.rl[k] = v
  return c


def test_config_json_is_written_and_read_back(run):
  root, workdir = run
  saved = read_config(workdir)
  assert saved.data.prompt_buckets == micro(root).data.prompt_buckets  # tuples come back as tuples
  assert config_changes(saved, micro(root)) == []
  with open(f"{workdir}/config.json") as f:
    assert json.load(f)["rl"]["batch_questions"] == 8


def test_resume_with_another_config_is_refused_naming_the_keys(run):
  root, workdir = run
  saved = micro(root).rl
  other_split = 1 if saved.mini_batches != 1 else 2
  changed = micro(root, lr=1e-3, mini_batches=other_split)
  expected = (f"rl.lr: {saved.lr!r} -> 0.001; "
              f"rl.mini_batches: {saved.mini_batches} -> {other_split}")
  with pytest.raises(ConfigError, match=re.escape(expected)):
    train.train_and_evaluate(changed, workdir)
  longer = micro(root)
  longer.total_steps = 3  # a longer run resumes, with its programs cached elsewhere too
  longer.eval.every = 0
  longer.compilation_cache = str(root / "elsewhere")
  assert train.train_and_evaluate(longer, workdir)["steps"] == 3


def test_allow_config_change_resumes_anyway(tmp_path, run):
  root, _ = run
  c = micro(root)
  train.train_and_evaluate(c, str(tmp_path))
  changed = micro(root, lr=1e-3)
  changed.total_steps = 3
  changed.allow_config_change = True
  assert train.train_and_evaluate(changed, str(tmp_path))["steps"] == 3


def test_export_loads_in_transformers_with_the_trained_logits(run, tmp_path):
  root, workdir = run
  out = export.export_workdir(workdir, str(tmp_path / "hf"), 2)
  trained = load_trained(workdir, 2)
  ours = nnx.merge(trained.graphdef, trained.params)
  tokens = np.array([[3, 5, 7, 9, 11, 2]], np.int32)
  mask = np.ones_like(tokens)
  logits, _ = ours(tokens, qwen2.positions_from_mask(mask), mask)
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
  with torch.no_grad():
    ref = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4)
  tok = transformers.AutoTokenizer.from_pretrained(out)  # the tokenizer files travel along
  assert tok.decode(tok("12+3=", add_special_tokens=False)["input_ids"]) == "12+3="
  with pytest.raises(ConfigError, match="step 7"):
    export.export_workdir(workdir, str(tmp_path / "x"), 7)


def test_evaluate_a_workdir_checkpoint(run):
  _, workdir = run
  report = evaluate.evaluate_workdir(workdir)
  assert report["step"] == max(load_trained(workdir).step, 2)
  first = next(iter(report["sets"].values()))
  assert 0.0 <= first[f"avg@{first['k']}"] <= 1.0


def test_evaluate_a_real_config_without_model_path_fails_in_one_line():
  with pytest.raises(ConfigError, match="--config.model.path"):
    evaluate.evaluate_checkpoint(load_config("qwen1p5b_math"))


def test_a_user_jsonl_with_mapped_fields_trains(run, tmp_path):
  """data.train as a file path with its own field names; a bad row names file and line."""
  from dots_jax.data.dataset import load_dataset
  from dots_jax.policy import policy_path
  root, _ = run
  c = micro(root)
  heldout = load_dataset(data_settings(c.data), "synthetic_heldout")
  rows = [{"q": x.problem, "a": x.answer, "uid": f"u{i}"} for i, x in enumerate(heldout.get_batch(range(40)))]
  path = tmp_path / "mine.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  c.data.update(train=str(path), problem_field="q", answer_field="a", id_field="uid")
  qs = load_dataset(data_settings(c.data), "train")
  assert len(qs) == 40 and qs[3].id == "u3" and qs[3].problem == rows[3]["q"]
  c.model.path = policy_path("", settings.read(c).tiny)
  summary = train.train_and_evaluate(c, str(tmp_path / "w"))
  assert summary["steps"] == 2 and summary["rollouts"] > 0
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"q": "1+1"}) + "\n")
  c.data.train = str(bad)
  with pytest.raises(ValueError, match=r"bad\.jsonl:2.*'a'"):
    load_dataset(data_settings(c.data), "train")


def test_an_unreachable_url_is_one_line():
  # gs:// itself is tested end to end in tests/test_gcs.py; a scheme nothing serves fails early.
  from dots_jax.run.startup import check_model_path, check_workdir
  with pytest.raises(ConfigError, match="--workdir=.*cannot be reached"):
    check_workdir("nosuchscheme://bucket/run")
  with pytest.raises(ConfigError, match="config.model.path=.*cannot be read"):
    check_model_path("nosuchscheme://bucket/model")


def test_sigterm_saves_the_current_step_and_the_run_resumes(run, tmp_path):
  """A preemption notice (SIGTERM) mid-run: the step in progress finishes, is checkpointed, the job
  exits 0; rerunning resumes from that step."""
  import os
  import re
  import signal
  import subprocess
  import sys
  import time
  root, _ = run
  workdir = tmp_path / "w"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, "-m", "dots_jax.main", "--config=configs/tiny.py:micro",
         f"--workdir={workdir}", "--config.total_steps=500", "--config.eval.every=0",
         "--config.ckpt.every=1000", f"--config.tiny.cache_dir={root / 'tiny'}",
         f"--config.data.prepared_dir={root / 'prepared'}",
         f"--config.compilation_cache={root / 'xla'}"]  # the module's cache (micro_cache)
  proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-2000:]
  saved = int(re.search(r"preempted: saved step (\d+)", out).group(1))
  assert 2 <= saved < 500
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["preempted"] and summary["steps"] == saved
  assert (workdir / "checkpoints" / str(saved)).is_dir()
  c = micro(root)
  c.eval.every, c.ckpt.every, c.total_steps = 0, 1000, saved + 1
  resumed = train.train_and_evaluate(c, str(workdir))
  assert resumed["steps"] == saved + 1 and not resumed["preempted"]
  steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
  assert steps[-1] == saved + 1 and steps.count(saved + 1) == 1


def test_a_mistyped_override_is_one_line_with_the_closest_keys():
  import os
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "dots_jax.main", "--config=configs/tiny.py:micro",
                        "--config.rl.learning_rate=1e-5", "--workdir=/tmp/never_written"],
                       cwd=repo, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "--config.rl.learning_rate" in lines[0] and "rl.lr" in lines[0], lines


def test_wandb_run_continues_on_resume_and_checkpoints_export(run, tmp_path, monkeypatch):
  """With log.wandb_project set, metrics also go to W&B (a stand-in module here), and a resumed job
  logs into the same run id; ckpt.export_hf writes each checkpoint as a HF directory."""
  import sys
  import types
  calls = []

  class Run:
    def __init__(self, **kw):
      calls.append(("init", kw["id"], kw["resume"]))

    def log(self, record, step):
      calls.append(("log", step))

    def finish(self):
      calls.append(("finish",))

  fake = types.SimpleNamespace(init=lambda **kw: Run(**kw),
                               util=types.SimpleNamespace(generate_id=lambda: f"id{len(calls)}"))
  monkeypatch.setitem(sys.modules, "wandb", fake)
  root, _ = run
  c = micro(root)
  c.log.wandb_project = "dots"
  c.ckpt.export_hf = True
  train.train_and_evaluate(c, str(tmp_path))
  c.total_steps = 3
  train.train_and_evaluate(c, str(tmp_path))
  inits = [x for x in calls if x[0] == "init"]
  assert len(inits) == 2 and inits[0][1] == inits[1][1] and inits[1][2] == "allow"
  assert [x[1] for x in calls if x[0] == "log"] == [0, 1, 2, 3]
  assert (tmp_path / "hf" / "2" / "config.json").exists() and (tmp_path / "hf" / "3").is_dir()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
  from dots_jax.run.workdir import WorkdirLock
  first = WorkdirLock(str(tmp_path)).acquire()
  with pytest.raises(ConfigError, match=rf"in use by pid {os.getpid()} on "):
    WorkdirLock(str(tmp_path)).acquire()
  first.release()
  WorkdirLock(str(tmp_path)).acquire().release()  # free again once the first writer is done


def test_export_refuses_a_run_directory_and_a_non_empty_one(tmp_path):
  from dots_jax.tools.export import export_workdir
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  with pytest.raises(ConfigError, match="holds a run directory"):
    export_workdir(str(run), str(run))
  other = tmp_path / "other_run"
  other.mkdir()
  (other / "metrics.jsonl").write_text("")
  with pytest.raises(ConfigError, match="holds a run directory"):
    export_workdir(str(run), str(other), overwrite=True)
  busy = tmp_path / "busy"
  busy.mkdir()
  (busy / "notes.txt").write_text("mine")
  with pytest.raises(ConfigError, match="not empty .* --overwrite"):
    export_workdir(str(run), str(busy))
  assert (busy / "notes.txt").read_text() == "mine" and (run / "config.json").read_text() == "{}"


def test_a_run_started_before_the_tools_kept_their_own_settings_resumes(tmp_path):
  """A config.json written when the job's config still carried the planner's keys (dry_run,
  plan_*), the simulator's (sim.*) and the tiny base's in every config: nothing blocks its resume;
  a real change still does."""
  from dots_jax.run.workdir import CONFIG_FILE, check_config, config_changes
  current = load_config("tiny", "micro")
  old = json.loads(current.to_json())
  old.update(dry_run=False, plan_topology="", plan_compile=False, plan_fit_margin=0.9)
  old["sim"] = {"questions": 4000, "drift_sd": 0.5}
  (tmp_path / CONFIG_FILE).write_text(json.dumps(old))
  assert check_config(current, str(tmp_path)) == []
  qwen = load_config("qwen1p5b_math")  # no tiny section now: an old one's tiny.* keys are retired
  saved = load_config("qwen1p5b_math").to_dict()
  saved["tiny"] = {"hidden_size": 128}
  from ml_collections import ConfigDict
  assert config_changes(ConfigDict(saved), qwen) == []
  current.rl.lr *= 2
  with pytest.raises(ConfigError, match="rl.lr"):
    check_config(current, str(tmp_path))
