"""The embedded default's base policy: cached by config hash, loaded like a real Qwen2.5 checkpoint."""
import json
import os

import numpy as np
import pytest

from dots_jax.config_base import base_config
from dots_jax.data.synthetic import synthetic_rows
from dots_jax.model.hf_io import load_policy, load_tokenizer
from dots_jax.policy import tiny_base as base
from dots_jax.tiny import spread


def micro(tmp_path):
  c = base_config()
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
  key = base.tiny_key(c)
  c.tiny.cache_dir = "/elsewhere"
  assert base.tiny_key(c) == key
  c.tiny.sft_steps += 1
  assert base.tiny_key(c) != key
  c.tiny.sft_steps -= 1
  c.data.synthetic.seed += 1
  assert base.tiny_key(c) != key


def test_made_once_then_loaded_like_qwen(tmp_path, monkeypatch):
  c = micro(tmp_path)
  path = base.ensure_tiny_base(c, log=lambda s: None)
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  assert hf["model_type"] == "qwen2" and hf["num_hidden_layers"] == 1
  tok = load_tokenizer(path)
  assert tok.eos_token == "<|im_end|>" and tok.chat_template
  cfg, _ = load_policy(path)
  assert cfg.eos_ids == (tok.eos_token_id,) and cfg.vocab_size == len(tok)
  with open(os.path.join(path, "tiny_base.json")) as f:
    info = json.load(f)
  assert info["key"] == base.tiny_key(c) and info["sft_final_loss"] < 4.0  # log(100) = 4.6
  # Cached: a second call must not rebuild.
  monkeypatch.setattr(base, "build_tiny_base", lambda *a, **k: pytest.fail("rebuilt"))
  assert base.ensure_tiny_base(c) == path
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
