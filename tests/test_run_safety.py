"""A run directory that cannot be silently corrupted: the config is committed with the first
checkpoint, a diverging policy stops before it is saved, a resume compares the training data, and
bad input is one line naming what is wrong (checkpoint digests: test_checkpoint_verify.py; one
writer and export: test_workdir.py)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from config_files import load_config
from dots_jax import train
from dots_jax.config_common import ConfigError
from dots_jax.data.prompts import PromptTable
from dots_jax.data.question import Question, field_mapper, read_questions
from dots_jax.model import qwen2
from dots_jax.policy.tokenizer import make_char_tokenizer
from dots_jax.rewards.__main__ import read_pairs
from dots_jax.rl.update import DivergenceError
from dots_jax.run.startup import check_model_mesh, validate_config
from dots_jax.run.settings import data_settings
from dots_jax.run.workdir import check_data
from test_main import micro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cache(micro_cache):
  return micro_cache


def test_divergence_stops_before_saving_and_a_failed_start_does_not_block(cache, tmp_path,
                                                                          capsys):
  work = str(tmp_path)
  # The micro base solves nothing (zero advantages): an entropy bonus gives every step a gradient.
  wild = {"rl.lr": 1e3, "rl.entropy_coef": 0.01}
  # A first start that diverges at once: stopped in one line, nothing committed or saved.
  with pytest.raises(DivergenceError, match=r"diverged at RL step 0: the update moved the weights"):
    train.train_and_evaluate(micro(cache, **wild), work)
  assert not os.path.exists(os.path.join(work, "config.json"))
  assert not os.path.exists(os.path.join(work, "checkpoints", "1"))
  # ... so the sane command runs (today's code refused it: "started with another config").
  assert train.train_and_evaluate(micro(cache), work)["steps"] == 2
  with open(os.path.join(work, "config.json")) as f:
    assert json.load(f)["rl"]["lr"] == pytest.approx(2e-5)
  # Resumed on with a diverging learning rate: the newest checkpoint stays the last good one, and
  # allow_config_change says what it let through.
  capsys.readouterr()
  bad = micro(cache, **wild, **{"total_steps": 4, "allow_config_change": True})
  with pytest.raises(DivergenceError, match="RL step 2"):
    train.train_and_evaluate(bad, work)
  out = capsys.readouterr().out
  assert "allow_config_change: resuming with 2 change(s): rl.entropy_coef: 0.0 -> 0.01; rl.lr: " \
         "2e-05 -> 1000.0" in out, out
  assert sorted(os.listdir(os.path.join(work, "checkpoints"))) == ["2"]
  with open(os.path.join(work, "config.json")) as f:  # not committed: no checkpoint was made with it
    assert json.load(f)["rl"]["lr"] == pytest.approx(2e-5)


def _questions(n: int, order=None) -> list[Question]:
  idx = list(range(n)) if order is None else order
  return [Question(f"q{i}", j, f"{i}+{i}=?", str(2 * i)) for j, i in enumerate(idx)]


def test_a_changed_training_file_is_refused_on_resume():
  tok = make_char_tokenizer()
  data = data_settings(load_config("tiny", "micro").data)
  table = lambda qs: PromptTable(tok, data, qs).fingerprint
  saved = table(_questions(60))
  assert table(_questions(60)) == saved
  fewer, shuffled = table(_questions(40)), table(_questions(60, order=list(range(60))[::-1]))
  assert fewer["rows"] == 40 and shuffled["rows"] == 60 and shuffled["sha256"] != saved["sha256"]
  with pytest.raises(ConfigError, match="training data changed since this run started: .* now "
                                        "gives 40 questions .* made on 60"):
    check_data(saved, fewer, "synthetic", allow_change=False)
  lines = []
  check_data(saved, shuffled, "synthetic", allow_change=True, log=lines.append)
  assert len(lines) == 1 and "allow_config_change: resuming on other training data" in lines[0]
  # checkpoints from before fingerprints are not checked
  check_data(None, fewer, "synthetic", allow_change=False)


@pytest.mark.parametrize("key,value,message", [
    ("rl.lr", -1.0, "config.rl.lr=-1.0 must be a finite number > 0"),
    ("rl.lr", float("nan"), "config.rl.lr=nan must be"),
    ("sampling.temperature", 0.0, "config.sampling.temperature=0.0: training samples must"),
    ("rl.behavior_is_cap", 0.5, "config.rl.behavior_is_cap=0.5 must be 0"),
    ("model.activation_dtype", "float64", "config.model.activation_dtype='float64'"),
])
def test_bad_settings_are_one_line_naming_the_flag(key, value, message):
  c = load_config("tiny", "micro")
  section, leaf = key.split(".")
  c[section][leaf] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
    validate_config(c)


def test_a_tensor_axis_that_does_not_divide_the_heads_is_refused():
  cfg = qwen2.Qwen2Config(vocab_size=100, hidden_size=1536, intermediate_size=8960,
                          num_hidden_layers=2, num_attention_heads=12, num_key_value_heads=2)
  with pytest.raises(ConfigError, match="config.mesh.tensor=5 does not divide the model's 12 "
                                        "attention heads"):
    check_model_mesh(cfg, {"data": 1, "fsdp": 1, "tensor": 5})
  check_model_mesh(cfg, {"data": 1, "fsdp": 1, "tensor": 4})


def test_non_utf8_bytes_name_the_file_and_line(tmp_path):
  data = tmp_path / "train.jsonl"
  data.write_bytes(b'{"problem": "1+1", "answer": "2"}\n{"problem": "x\xff", "answer": "3"}\n')
  with pytest.raises(ValueError, match=rf"{data}:2: not UTF-8 \(byte 0xff at column 15\)"):
    read_questions(str(data), field_mapper(), id_prefix="t", skip_bad_rows=False)
  questions, report = read_questions(str(data), field_mapper(), id_prefix="t", skip_bad_rows=True)
  assert len(questions) == 1 and dict(report.skipped) == {"bad_encoding": 1}
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_bytes(b'{"response": "\\\\boxed{2}", "gold": "2"}\n\x80\n')
  with pytest.raises(ValueError, match=rf"{pairs}:2: not UTF-8"):
    read_pairs(str(pairs))


def _main(*args):
  return subprocess.run([sys.executable, "-m", "dots_jax.main", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_command_line_errors_are_one_line_and_help_lists_the_keys():
  missing = _main("--config=configs/nope.py", "--workdir=/tmp/unused")
  assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
  assert "--config=configs/nope.py: no such file" in missing.stderr
  bad_value = _main("--config=configs/tiny.py:micro", "--config.rl.lr=abc", "--workdir=/tmp/unused")
  assert bad_value.returncode == 2 and bad_value.stderr.strip().count("\n") == 0
  assert "--config.rl.lr=abc: could not convert string to float" in bad_value.stderr
  helped = _main("--help")
  assert helped.returncode == 0 and "--list_config" in helped.stdout
  listed = _main("--list_config", "--config=configs/tiny.py:micro")
  assert listed.returncode == 0
  lines = listed.stdout.splitlines()
  assert "--config.rl.lr=2e-05" in lines and "--config.total_steps=4" in lines
  assert lines[-1].startswith("methods (--config.method): dots (") and "dots_rr_greso" in lines[-1]
  np.testing.assert_equal(len(lines) > 100, True)


# ----- readers never write; caches are never half-written; every user error is one line -----

def test_a_reader_held_mid_restore_costs_the_trainer_nothing(cache, tmp_path, monkeypatch):
  """An evaluation (the reader of `load_trained`) restores step 2 while the trainer goes on to step
  5, rotating step 2 away under it: the reader moves on to the newest verified step, deletes and
  writes nothing, and the trainer's next resume continues from its own newest step with nothing
  moved aside (the reader used to rotate with its stale step list and delete the trainer's
  digests)."""
  import threading

  from dots_jax.run import checkpoint
  from dots_jax.run.workdir import load_trained
  work = str(tmp_path / "w")
  every = {"ckpt.every": 1, "ckpt.keep": 2, "eval.every": 0}
  train.train_and_evaluate(micro(cache, **every), work)
  reading, release = threading.Event(), threading.Event()
  restore = checkpoint.Checkpointer.restore

  def held(self, *args, **kwargs):
    if self.read_only and not release.is_set():
      reading.set()
      release.wait(120)
    return restore(self, *args, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpointer, "restore", held)
  said, got = [], {}
  reader = threading.Thread(target=lambda: got.update(
      trained=load_trained(work, log=said.append)))
  reader.start()
  assert reading.wait(120)
  train.train_and_evaluate(micro(cache, total_steps=5, **every), work)  # saves 3-5, rotates 2 away
  release.set()
  reader.join(120)
  assert got["trained"].step == 5
  assert any("rotated away while it was read" in line for line in said), said
  assert sorted(os.listdir(os.path.join(work, "checkpoints_verified"))) == ["4.json", "5.json"]
  summary = train.train_and_evaluate(micro(cache, total_steps=6, **every), work)
  assert summary["steps"] == 6 and not os.path.exists(os.path.join(work, "checkpoints_corrupt"))
  with open(os.path.join(work, "metrics.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4, 5, 6]


def test_the_trainers_rotation_tolerates_a_step_already_gone(tmp_path):
  import jax.numpy as jnp

  from dots_jax.run.checkpoint import Checkpointer
  ckpt = Checkpointer(str(tmp_path), keep=2)
  for step in (1, 2):
    ckpt.save(step, {"w": jnp.full(3, float(step))}, {"k": step})
  import shutil
  shutil.rmtree(tmp_path / "checkpoints" / "1")  # gone before the rotation that deletes it
  ckpt.save(3, {"w": jnp.full(3, 3.0)}, {"k": 3})
  assert sorted(ckpt.all_steps()) == [2, 3]
  ckpt.close()


def test_an_edited_config_json_is_one_line_naming_the_file_and_key(cache, tmp_path):
  from dots_jax.main import error_line
  work = str(tmp_path / "w")
  train.train_and_evaluate(micro(cache), work)
  path = os.path.join(work, "config.json")
  with open(path) as f:
    good = f.read()
  with open(path, "w") as f:
    f.write(good[:-20])  # cut off mid-object, as a careless edit
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(micro(cache), work)
  line = error_line(e.value, work)
  assert line.startswith(f"{path}: not valid JSON (") and "\n" not in line
  typed = json.loads(good)
  typed["rl"]["lr"] = "fast"
  with open(path, "w") as f:
    json.dump(typed, f)
  with pytest.raises(ConfigError) as e:
    train.train_and_evaluate(micro(cache), work)
  line = error_line(e.value, work)
  assert line.startswith(f"{path}: rl.lr is 'fast', the config wants a float") and "\n" not in line


def test_a_full_disk_and_a_bad_row_are_one_line(cache, tmp_path, monkeypatch):
  import errno

  from dots_jax.main import error_line
  from dots_jax.run import checkpoint
  work = str(tmp_path / "w")
  save = checkpoint.Checkpointer.save

  def full_after_step_1(self, step, *args, **kwargs):
    if step > 1:
      raise OSError(errno.ENOSPC, "No space left on device", os.path.join(work, "checkpoints"))
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", full_after_step_1)
  with pytest.raises(OSError) as e:
    train.train_and_evaluate(micro(cache, **{"ckpt.every": 1}), work)
  assert error_line(e.value, work) == (f"no space left writing {work}/checkpoints; free space and "
                                       "rerun: the run resumes from step 1")
  bad = tmp_path / "rows.jsonl"
  bad.write_text('{"problem": "1+1", "answer": "2"}\n["not", "an", "object"]\n')
  with pytest.raises(ValueError) as e:
    read_questions(str(bad), field_mapper(), id_prefix="rows", skip_bad_rows=False)
  assert error_line(e.value, work) == (f"{bad}:2: expected a JSON object, got list (set "
                                       "config.data.skip_bad_rows=True to skip bad rows)")
  assert error_line(RuntimeError("a bug"), work) is None  # a bug keeps its traceback


def test_summary_json_is_strict_json(cache, tmp_path):
  work = str(tmp_path / "w")
  train.train_and_evaluate(micro(cache, **{"eval.every": 0}), work)  # never evaluated: NaN
  with open(os.path.join(work, "summary.json")) as f:
    summary = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
  assert summary["final_eval_accuracy"] is None and summary["steps"] == 2
