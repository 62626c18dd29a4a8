"""The embedded default's base policy: shipped for the default recipe, else built once and cached by
the recipe's fingerprint; loaded like a real Qwen2.5 checkpoint."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dots_jax.run import settings
from dots_jax.data.synthetic import synthetic_rows
from dots_jax.model.hf_io import load_policy, load_tokenizer
from dots_jax.policy import tiny_base as base
from dots_jax.tiny import spread

from config_files import load_config


def recipe(c):
  return settings.read(c).tiny


def micro(tmp_path):
  c = load_config("tiny")
  c.tiny.update(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_ratio=2,
                sft_steps=30, sft_schedule_steps=30, sft_batch=32, sft_warmup=2,
                cache_dir=str(tmp_path / "cache"))
  c.data.synthetic.update(train_size=200, heldout_size=64)
  c.data.chat_template = False
  c.data.max_prompt_tokens = 16
  c.sampling.max_new_tokens = 8
  return c


def test_key_tracks_inputs_not_location(tmp_path):
  c = micro(tmp_path)
  key = recipe(c).key
  c.tiny.cache_dir = "/elsewhere"
  assert recipe(c).key == key
  c.tiny.sft_steps += 1
  assert recipe(c).key != key
  c.tiny.sft_steps -= 1
  c.data.synthetic.seed += 1
  assert recipe(c).key != key


def test_made_once_then_loaded_like_qwen(tmp_path, monkeypatch):
  c = micro(tmp_path)
  said = []
  path = base.ensure_tiny_base(recipe(c), log=said.append)
  # One line says why this recipe is not the shipped base, naming what differs.
  why = [s for s in said if "differs from the shipped base's" in s]
  assert len(why) == 1 and "tiny.hidden_size 128 -> 32" in why[0], said
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  assert hf["model_type"] == "qwen2" and hf["num_hidden_layers"] == 1
  tok = load_tokenizer(path)
  assert tok.eos_token == "<|im_end|>" and tok.chat_template
  cfg, _ = load_policy(path)
  assert cfg.eos_ids == (tok.eos_token_id,) and cfg.vocab_size == len(tok)
  with open(os.path.join(path, "tiny_base.json")) as f:
    info = json.load(f)
  assert info["key"] == recipe(c).key and info["sft_final_loss"] < 4.0  # log(100) = 4.6
  # Cached: a second call must not rebuild.
  monkeypatch.setattr(base, "build_tiny_base", lambda *a, **k: pytest.fail("rebuilt"))
  assert base.ensure_tiny_base(recipe(c)) == path
  assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".tmp-")]

  # Exact pass rates are probabilities; zero-variance shares follow from them.
  rows = synthetic_rows(c.data.synthetic, "train")[:40]
  p, greedy = spread.exact_pass_rates(c, path, rows, batch=16)
  assert p.shape == (40,) and np.all((p >= 0) & (p <= 1)) and greedy.dtype == bool
  rep = spread.spread_report(p, greedy, np.array([f for _, _, f in rows]), 8)
  assert rep["pool"]["zero_var"] == pytest.approx(np.mean(p ** 8 + (1 - p) ** 8), rel=1e-5)
  # The base bars are the same arithmetic, and agree with groups drawn from those pass rates.
  checked = spread.base_checks(c, p)
  assert checked["zero_var_start"]["value"] == pytest.approx(rep["pool"]["zero_var"], rel=1e-6)
  assert checked["all_wrong_start"]["value"] == pytest.approx(np.mean((1 - p) ** 8), rel=1e-6)
  assert checked["pool_heldout_overlap"] == {**checked["pool_heldout_overlap"], "value": 0.0,
                                             "pass": True}
  draws = np.random.default_rng(0).random((2000, 40, 8)) < p[None, :, None]
  zero_var = np.mean(draws.all(-1) | ~draws.any(-1))
  assert zero_var == pytest.approx(checked["zero_var_start"]["value"], abs=0.01)
  assert set(rep["families"]) <= set(c.data.synthetic.families)


def test_the_shipped_base_is_the_default_recipe():
  """A change of configs/tiny.py's recipe without a rebuilt base fails here, not at a user's run."""
  shipped = base.shipped_base()
  assert shipped is not None, f"no shipped base in {base.SHIPPED_DIR}"
  default = load_config("tiny")
  assert shipped.key == recipe(default).key, (
      "configs/tiny.py's base recipe changed (" + base.recipe_changes(shipped.info["recipe"],
                                                                       recipe(default).as_dict())
      + "): rebuild the shipped base with `python -m dots_jax.policy.tiny_base "
      "--config=configs/tiny.py`")
  assert shipped.info["recipe"] == recipe(default).as_dict()
  assert shipped.problem() is None
  assert set(shipped.info["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_the_default_loads_the_shipped_base_without_building(tmp_path, monkeypatch):
  c = load_config("tiny")
  c.tiny.cache_dir = str(tmp_path / "cache")
  monkeypatch.setattr(base, "build_tiny_base", lambda *a, **k: pytest.fail("built"))
  said = []
  assert base.ensure_tiny_base(recipe(c), log=said.append) == base.SHIPPED_DIR and not said
  cfg, _ = load_policy(base.SHIPPED_DIR)
  assert cfg.hidden_size == c.tiny.hidden_size and cfg.num_hidden_layers == c.tiny.num_layers
  assert not (tmp_path / "cache").exists()


def test_a_damaged_shipped_base_is_built_from_its_recipe(tmp_path, monkeypatch):
  c = micro(tmp_path)
  shipped_dir = str(tmp_path / "assets" / "tiny_base")
  base.build_into(recipe(c), shipped_dir, log=lambda s: None)
  monkeypatch.setattr(base, "SHIPPED_DIR", shipped_dir)
  monkeypatch.setattr(base, "shipped_base", lambda: base.ShippedBase(
      shipped_dir, json.load(open(os.path.join(shipped_dir, base.INFO_FILE)))))
  assert base.ensure_tiny_base(recipe(c), log=lambda s: pytest.fail(s)) == shipped_dir
  with open(os.path.join(shipped_dir, "model.safetensors"), "r+b") as f:
    f.seek(-4, os.SEEK_END)
    f.write(b"\0\0\0\0")
  said = []
  path = base.ensure_tiny_base(recipe(c), log=said.append)
  assert path == base.tiny_base_dir(recipe(c)) and os.path.isfile(os.path.join(path, base.INFO_FILE))
  assert "has missing or changed files (model.safetensors)" in said[0], said


def test_the_builder_gives_the_same_bytes_twice(tmp_path):
  c = micro(tmp_path)
  c.tiny.update(sft_steps=8, sft_schedule_steps=8)
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  info_a = base.build_into(recipe(c), a, log=lambda s: None)
  info_b = base.build_into(recipe(c), b, log=lambda s: None)
  assert info_a["files"] == info_b["files"] and "model.safetensors" in info_a["files"]
  for name in info_a["files"]:
    with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
      assert fa.read() == fb.read(), name


def test_builds_killed_on_this_host_leave_nothing_behind(tmp_path):
  host = socket.gethostname()
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  for name in (f".tmp-tiny-{host}-{dead}-abc", f".tmp-tiny-{host}-{os.getpid()}-def",
               ".tmp-tiny-old-ghi", f".tmp-tiny-otherhost-{dead}-jkl", ".tmp-tiny-xyz",
               "tiny-0123456789abcdef"):
    (tmp_path / name).mkdir()
  removed = base.remove_stale_tmp(str(tmp_path))
  # The dead builder's, a swapped-out copy and a pre-pid name go; a live builder's, another
  # host's (its pid means nothing here) and finished bases stay.
  assert sorted(removed) == sorted([f".tmp-tiny-{host}-{dead}-abc", ".tmp-tiny-old-ghi",
                                    ".tmp-tiny-xyz"])
  assert sorted(os.listdir(tmp_path)) == sorted([f".tmp-tiny-{host}-{os.getpid()}-def",
                                                 f".tmp-tiny-otherhost-{dead}-jkl",
                                                 "tiny-0123456789abcdef"])


def test_a_damaged_cached_build_is_built_again(tmp_path):
  c = micro(tmp_path)
  c.tiny.update(sft_steps=4, sft_schedule_steps=4)
  path = base.ensure_tiny_base(recipe(c), log=lambda s: None)
  with open(os.path.join(path, "model.safetensors"), "r+b") as f:
    f.seek(-4, os.SEEK_END)
    f.write(b"\0\0\0\0")
  said = []
  assert base.ensure_tiny_base(recipe(c), log=said.append) == path
  assert any("has missing or changed files (model.safetensors); building it again" in s
             for s in said), said
  assert base.shipped_base(path).problem() is None
  assert not [d for d in os.listdir(os.path.dirname(path)) if d.startswith(".tmp-")]
