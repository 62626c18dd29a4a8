"""DOTS difficulty estimator and question embeddings, on synthetic data with a planted signal."""

import dataclasses
import json
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dots_jax.difficulty import embed
from dots_jax.difficulty.estimator import (EstimatorConfig, init_estimator, linear_recalibration,
                                           load_estimator, predict_all, save_estimator)
from dots_jax.difficulty.fit import bce, fit_estimator, warmup_linear_decay
from dots_jax.model.qwen2 import Qwen2Config, init_model
from dots_jax.selection.base import step_rng
from dots_jax.selection.dots import DotsSource


def _planted(n=1200, d=32, seed=0):
  """A hidden direction of the embedding sets each question's true pass rate; labels from 16 draws."""
  rng = np.random.default_rng(seed)
  emb = rng.normal(size=(n, d)).astype(np.float32)
  w = rng.normal(size=d)
  p = 1 / (1 + np.exp(-2.0 * emb @ w / np.sqrt(d)))
  labels = (rng.random((n, 16)) < p[:, None]).mean(1).astype(np.float32)
  return emb, labels, p


def test_trained_estimator_beats_raw_and_untrained():
  emb, labels, _ = _planted()
  tr, te = np.arange(900), np.arange(900, 1200)
  model = init_estimator(EstimatorConfig(32, width=64, dropout=0.1))
  refs = np.random.default_rng(1).choice(tr, 64, replace=False)

  def heldout_pearson(m):
    pred = predict_all(m, emb, emb[refs], labels[refs], chunk=256)
    slope, icpt = linear_recalibration(pred[refs], labels[refs])
    return np.corrcoef(slope * pred[te] + icpt, labels[te])[0, 1]

  before = heldout_pearson(model)
  losses = fit_estimator(model, emb[tr], labels[tr], steps=250, lr=2e-3, warmup=25, batch=64,
                         ref_size=64, seed=0)
  after = heldout_pearson(model)
  assert np.mean(losses[-20:]) < np.mean(losses[:20])
  assert after > 0.75 and after > before + 0.2, (before, after)


def test_estimator_trained_on_several_policies_follows_each_policys_references():
  """Two policies label the same questions (a strong one: p ** 0.3, a weak one: p ** 3). Fitted on
  both, the estimator predicts each policy's pass rates from that policy's reference labels, and
  per-query reference labels give the same result as one policy's [K] labels."""
  emb, _, p = _planted(seed=2)
  rng = np.random.default_rng(3)
  strong, weak = ((rng.random((len(p), 16)) < (p ** e)[:, None]).mean(1).astype(np.float32)
                  for e in (0.3, 3.0))
  tr, te = np.arange(900), np.arange(900, 1200)
  model = init_estimator(EstimatorConfig(32, width=64, dropout=0.0))
  losses = fit_estimator(model, emb[tr], np.stack([strong, weak])[:, tr], steps=300, lr=2e-3,
                         warmup=25, batch=64, ref_size=64, seed=0)
  assert np.mean(losses[-20:]) < np.mean(losses[:20])
  refs = rng.choice(tr, 64, replace=False)
  for labels in (strong, weak):
    pred = predict_all(model, emb[te], emb[refs], labels[refs], chunk=256)
    assert abs(pred.mean() - labels[te].mean()) < 0.08, (pred.mean(), labels[te].mean())
    assert np.corrcoef(pred, labels[te])[0, 1] > 0.6
  per_query = jnp.broadcast_to(jnp.asarray(weak[refs]), (len(te), len(refs)))
  a = model(jnp.asarray(emb[te]), jnp.asarray(emb[refs]), per_query)
  b = model(jnp.asarray(emb[te]), jnp.asarray(emb[refs]), jnp.asarray(weak[refs]))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_prediction_is_calibrated_weighted_mean():
  cfg = EstimatorConfig(8, width=16, dropout=0.0, tau=1e9)  # tau -> inf: uniform weights
  model = init_estimator(cfg)
  rng = np.random.default_rng(0)
  q, r = rng.normal(size=(5, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
  y = np.array([0.0, 0.25, 0.5, 0.5, 1.0, 0.75], np.float32)
  got = predict_all(model, q, r, y)
  temp, bias = (float(v) for v in model.calibration(jnp.asarray(y)))
  assert 1e-2 <= temp <= 10 and -1 < bias < 1
  base = y.mean()
  want = 1 / (1 + np.exp(-(np.log(base / (1 - base)) / temp + bias)))
  np.testing.assert_allclose(got, np.full(5, want), rtol=1e-5)


def test_dropout_only_with_a_key():
  model = init_estimator(EstimatorConfig(8, width=16, dropout=0.5))
  x = jax.random.normal(jax.random.key(1), (4, 8))
  np.testing.assert_array_equal(model.query(x), model.query(x))
  assert not np.allclose(model.query(x, jax.random.key(0)), model.query(x))


def test_linear_recalibration_hand_case():
  slope, icpt = linear_recalibration(np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.5, 0.7]))
  assert slope == pytest.approx(2.0) and icpt == pytest.approx(0.1)
  assert linear_recalibration(np.full(3, 0.4), np.array([0.0, 0.5, 1.0])) == (0.0, 0.5)


def test_bce_and_schedule():
  assert float(bce(jnp.array([0.5]), jnp.array([1.0]))) == pytest.approx(np.log(2), rel=1e-5)
  lrs = [warmup_linear_decay(t, lr=1.0, warmup=4, total=12) for t in range(12)]
  np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0])
  assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(1 / 8)
  assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_save_load_round_trip(tmp_path):
  emb, labels, _ = _planted(n=50, d=8)
  model = init_estimator(EstimatorConfig(8, width=16, dropout=0.0), seed=3)
  save_estimator(model, str(tmp_path))
  back = load_estimator(str(tmp_path))
  a = predict_all(model, emb, emb[:10], labels[:10], chunk=32)
  np.testing.assert_array_equal(a, predict_all(back, emb, emb[:10], labels[:10], chunk=32))
  with pytest.raises(FileNotFoundError, match="estimator.json"):
    load_estimator(str(tmp_path / "missing"))


def test_online_finetune_changes_adapters_and_survives_resume():
  emb, labels, p = _planted(n=300, d=16)

  def source():
    return DotsSource(emb, init_estimator(EstimatorConfig(16, width=16, dropout=0.0), seed=1),
                      ref_size=16, round_steps=1, alpha=0.5, tau=1e-3, chunk=128,
                      online_finetune=True, online_steps=5, online_lr=1e-3, online_batch=16)

  from dots_jax.rollout.roller import Rollouts
  from dots_jax.selection.driver import collect_batch
  from dots_jax.selection.uniform import UniformStrategy

  def env(step):
    def rollout(idx, round):
      rng = np.random.default_rng([step, len(idx)])
      return Rollouts.rewards_only(idx, (rng.random((len(idx), 8)) < p[idx][:, None]).astype(np.float32))
    return rollout

  s = UniformStrategy(source())
  w0 = np.asarray(s.source.model.query.linears[0].kernel[...]).copy()
  for step in range(2):
    collect_batch(s, env(step), step, 8, seed=0)
  assert not np.allclose(w0, s.source.model.query.linears[0].kernel[...])
  state = s.state_dict()
  t = UniformStrategy(source())
  t.load_state_dict(state)
  a = collect_batch(s, env(2), 2, 8, seed=0)
  b = collect_batch(t, env(2), 2, 8, seed=0)
  np.testing.assert_array_equal(a.indices, b.indices)
  np.testing.assert_allclose(s.source.pred, t.source.pred, rtol=1e-6)


def _tiny_backbone():
  cfg = Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
  return init_model(cfg, seed=0)


def test_embeddings_ignore_padding_and_batch_company():
  model = _tiny_backbone()
  lists = [[3, 4, 5], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], [5]]
  together = embed.embed_token_lists(model, lists, batch=4, max_len=32)
  alone = np.stack([embed.embed_token_lists(model, [t], batch=4, max_len=32)[0] for t in lists])
  np.testing.assert_allclose(together, alone, atol=1e-5)
  # mean over the real tokens' final hidden states, computed without any padding
  toks = jnp.asarray([lists[0]], jnp.int32)
  mask = jnp.ones_like(toks)
  h, _ = model.hidden(toks, jnp.arange(3)[None], mask)
  np.testing.assert_allclose(together[0], np.asarray(h[0]).mean(0), atol=1e-5)
  with pytest.raises(ValueError, match="question 1"):
    embed.embed_token_lists(model, [[1], []], batch=2, max_len=8)


def test_embeddings_on_a_mesh_equal_one_devices_and_bfloat16_stays_close():
  """The embedding pass sharded over 8 simulated devices (weights as the policy's, each batch over
  the data axes, the batch rounded up to a multiple of them) gives one device's embeddings; in
  bfloat16 they stay close (what it costs the estimator: docs/MEMORY.md)."""
  from flax import nnx
  from dots_jax.model import sharding
  model = _tiny_backbone()
  rng = np.random.default_rng(0)
  lists = [list(rng.integers(1, 50, n)) for n in (3, 9, 17, 5, 1, 30, 12)]
  one = embed.embed_token_lists(model, lists, batch=3, max_len=32)
  for sizes in ({"data": 2, "fsdp": 2, "tensor": 2}, {"data": 1, "fsdp": 8, "tensor": 1}):
    mesh = sharding.make_mesh(sizes)
    sharded = sharding.shard_model(model, mesh)
    got = embed.embed_token_lists(sharded, lists, batch=3, max_len=32, mesh=mesh)
    np.testing.assert_allclose(got, one, atol=1e-5)
  graphdef, state = nnx.split(model)
  bf16_cfg = dataclasses.replace(model.cfg, dtype="bfloat16", param_dtype="bfloat16")
  bf16 = nnx.merge(nnx.split(init_model(bf16_cfg, seed=0))[0],
                   jax.tree.map(lambda x: x.astype(jnp.bfloat16), state))
  low = embed.embed_token_lists(bf16, lists, batch=3, max_len=32)
  cos = np.sum(low * one, 1) / np.linalg.norm(low, axis=1) / np.linalg.norm(one, axis=1)
  assert cos.min() > 0.99, cos


def test_embedding_cache_round_trip(tmp_path):
  calls = []

  def compute():
    calls.append(1)
    return np.arange(6, dtype=np.float32).reshape(3, 2)

  texts = ["1+1=", "2+2=", "3+3="]
  a = embed.cached_embeddings(str(tmp_path), "synthetic/train", "bb1", texts, 64, compute)
  b = embed.cached_embeddings(str(tmp_path), "synthetic/train", "bb1", texts, 64, compute)
  np.testing.assert_array_equal(a, b)
  assert len(calls) == 1
  embed.cached_embeddings(str(tmp_path), "synthetic/train", "bb2", texts, 64, compute)
  assert len(calls) == 2  # another backbone is another cache entry


def test_dots_source_samples_near_alpha_from_predictions():
  n = 1000
  emb = np.zeros((n, 4), np.float32)
  src = DotsSource(emb, init_estimator(EstimatorConfig(4, width=8)), ref_size=4, round_steps=3,
                   alpha=0.5, tau=1e-3)
  src.pred = np.linspace(0, 1, n).astype(np.float32)
  from dots_jax.selection.base import StepContext
  order = src._sample_order(StepContext(step=0, rng=step_rng(0, 0), batch_questions=10), 10)
  assert sorted(order.tolist()) == list(range(n))  # a permutation: extras follow the block
  head = src.pred[order[:30]]
  # softmax(-|p - 0.5| / 1e-3) over a 0.001 grid: the 30 picks sit within a few hundredths of 0.5
  assert np.abs(head - 0.5).max() < 0.05


def test_evaluate_pool_reports_trained_above_raw_on_planted_signal(tmp_path):
  from dots_jax.config_base import base_config
  from dots_jax.difficulty.quality import evaluate_pool
  from dots_jax.difficulty.offline import Pool, train_on_pool
  from dots_jax.run import settings

  emb, labels, _ = _planted(n=900, d=32, seed=4)
  # the raw embedding carries the signal in one direction among noise dimensions
  pool = Pool(rows=np.arange(900), labels=labels, emb=emb, heldout=np.arange(900) >= 700,
              out_dir=str(tmp_path))
  c = base_config()
  c.selection.dots.update(width=64, dropout=0.0)
  c.selection.dots.fit.update(steps=250, lr=2e-3, warmup=25, batch=64, ref_size=48)
  stage = settings.read(c).stage
  model = train_on_pool(stage, pool, log=lambda _: None)
  report = evaluate_pool(stage, pool, model, log=lambda _: None)
  assert (tmp_path / "estimator.json").exists()
  assert report["heldout_questions"] == 200
  assert report["pearson_trained"] > 0.75
  assert report["pearson_trained"] > report["pearson_raw_embedding"] + 0.1


def test_auto_estimator_is_made_once_and_refit_when_settings_change(tmp_path, shared_tiny):
  """estimator_path="auto": the offline stage runs on first use (micro base policy), is reused, and a
  changed fit setting refits on the cached pool labels instead of reusing a stale estimator."""
  import os

  from config_files import load_config
  from dots_jax.difficulty.offline import ensure_estimator, load_or_init_estimator
  from dots_jax.policy import policy_path
  from dots_jax.run import settings

  def stage(c):
    s = settings.read(c)
    return settings.dots_stage(s, policy_path(s.model.path, s.tiny, log=lambda _: None))

  c = load_config("tiny", "micro")
  c.tiny.cache_dir = str(shared_tiny / "tiny")  # the session's micro base (conftest)
  c.data.prepared_dir = str(shared_tiny / "prepared")
  c.selection.dots.embed_path = str(tmp_path / "embeddings")  # the estimator is made next to it
  c.selection.dots.update(estimator_path="auto", width=32, layers=1)
  c.selection.dots.fit.update(pool=96, heldout=32, group=4, steps=20, warmup=2, batch=16,
                              ref_size=16, rollout_batch=64)
  logs = []
  out = ensure_estimator(stage(c), log=logs.append)
  assert out.startswith(str(tmp_path / "estimators"))
  marker = os.path.join(out, "estimator.json")
  first = os.stat(marker).st_mtime_ns
  assert any("labelling the pool" in line for line in logs)
  assert ensure_estimator(stage(c), log=logs.append) == out and os.stat(marker).st_mtime_ns == first
  est = load_or_init_estimator(stage(c), input_dim=32)
  assert est.cfg.width == 32

  c.selection.dots.fit.steps = 25
  logs.clear()
  assert ensure_estimator(stage(c), log=logs.append) == out
  assert os.stat(marker).st_mtime_ns != first
  assert any("pool labels from" in line for line in logs)
  assert not any("labelling the pool" in line for line in logs)

  # A labels file cut in half (a job killed while the old code wrote it in place): the rerun names
  # it, labels the pool again and completes, where it died with BadZipFile.
  labels = os.path.join(out, "pool_labels.npz")
  with open(labels, "rb") as f:
    data = f.read()
  with open(labels, "wb") as f:
    f.write(data[:len(data) // 2])
  c.selection.dots.fit.steps = 30
  logs.clear()
  assert ensure_estimator(stage(c), log=logs.append) == out
  assert any(f"{labels} does not load" in line for line in logs), logs
  assert any("labelling the pool" in line for line in logs)
  assert np.load(labels)["labels"].shape == np.load(labels)["rows"].shape
  # ... and a damaged estimator is refitted the same way
  with open(os.path.join(out, "params.npz"), "wb") as f:
    f.write(b"PK\x03\x04 cut")
  logs.clear()
  assert ensure_estimator(stage(c), log=logs.append) == out
  assert any("does not load" in line and "fitting it again" in line for line in logs), logs
  assert load_or_init_estimator(stage(c), input_dim=32).cfg.width == 32


def test_backbone_fingerprint_follows_recorded_weights_not_paths(tmp_path):
  """The shipped base (its files' digests recorded) has one fingerprint in every install, so its
  embeddings and estimators are cached once; a checkpoint without digests is told apart by path."""
  import shutil
  from dots_jax.policy.tiny_base import SHIPPED_DIR
  a, b = tmp_path / "a", tmp_path / "b"
  shutil.copytree(SHIPPED_DIR, a)
  shutil.copytree(SHIPPED_DIR, b)
  assert embed.backbone_fingerprint(str(a)) == embed.backbone_fingerprint(SHIPPED_DIR)
  assert embed.backbone_fingerprint(str(a)) == embed.backbone_fingerprint(str(b))
  info = json.loads((b / "tiny_base.json").read_text())
  info["files"]["model.safetensors"] = "0" * 64  # other weights
  (b / "tiny_base.json").write_text(json.dumps(info))
  assert embed.backbone_fingerprint(str(a)) != embed.backbone_fingerprint(str(b))
  for d in (a, b):
    (d / "tiny_base.json").unlink()
  assert embed.backbone_fingerprint(str(a)) != embed.backbone_fingerprint(str(b))
