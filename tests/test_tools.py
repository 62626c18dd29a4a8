"""The memory planner and the parity command."""

import pytest

from dots_jax.model import variants
from dots_jax.run import memory_plan as memory
from dots_jax.run import settings
from dots_jax.tools import compiled, parity, plan
from config_files import load_config
from hf_fixtures import make_tiny_hf_checkpoint


def test_plan_7b_fsdp8():
  cfg = variants.get_variant("7B", dtype="bfloat16", param_dtype="float32")
  out = memory.plan(cfg, "data:1,fsdp:8,tensor:1", batch=64, seq=2048)
  n = cfg.num_params()
  # Every 2-D weight divides by 8; norms and q/k/v biases (tensor-only) stay replicated.
  d, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
  replicated = (2 * cfg.num_hidden_layers + 1) * d + cfg.num_hidden_layers * (d + 2 * kv)
  assert out["params"] == 4 * ((n - replicated) // 8 + replicated)
  assert out["adam"] == 2 * out["params"]
  assert out["grads"] == out["params"]
  # k and v: L x B x S x K x H bf16, batch split 8 ways.
  assert out["kv_cache"] == 2 * 28 * (64 // 8) * 2048 * 4 * 128 * 2
  assert out["total"] == sum(out[k] for k in ("params", "adam", "grads", "kv_cache"))
  assert out["devices"] == 8


def test_plan_data_axis_replicates_and_tensor_splits():
  cfg = variants.get_variant("1.5B", dtype="bfloat16")
  one = memory.plan(cfg, {"data": 1, "fsdp": 1, "tensor": 1}, batch=8, seq=128)
  assert one["params"] == 4 * cfg.num_params()
  data8 = memory.plan(cfg, "data:8", batch=8, seq=128)
  assert data8["params"] == one["params"]  # pure data parallel keeps a full copy per device
  assert data8["kv_cache"] == one["kv_cache"] // 8
  tp2 = memory.plan(cfg, "tensor:2", batch=8, seq=128)
  assert tp2["params"] < 0.55 * one["params"]
  assert tp2["kv_cache"] == one["kv_cache"] // 2  # 2 KV heads over 2 devices
  with pytest.raises(ValueError, match="no -1"):
    memory.plan(cfg, {"data": -1, "fsdp": 1, "tensor": 1}, batch=1, seq=1)


def test_plan_cli(capsys, tmp_path):
  out = plan.state_plan("7B", "", "data:1,fsdp:8,tensor:1", 64, 2048, "bfloat16", "float32")
  text = capsys.readouterr().out
  assert "7.616B params" in text and f"{out['total']:,d} B" in text
  ckpt = make_tiny_hf_checkpoint(tmp_path)
  tiny = plan.state_plan("", str(ckpt), "data:1,fsdp:1,tensor:1", 1, 2048, "bfloat16", "bfloat16")
  assert tiny["params"] == 2 * tiny["param_count"]


def test_parity_cli(capsys, tmp_path):
  ckpt = make_tiny_hf_checkpoint(tmp_path, tie=True, num_attention_heads=4, num_key_value_heads=1)
  result = parity.run_parity(str(ckpt))
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert last.startswith("max_abs_logit_diff ")
  assert float(last.split()[-1]) == pytest.approx(result["max"], rel=1e-2)
  assert result["max"] <= 1e-4 and result["logit_scale"] > 1.0


def test_update_estimate_matches_the_compiled_program():
  """The planner's per-device estimate of the update step is within 25% of what XLA allocates for
  the compiled program (no remat: the CPU backend does not honour rematerialisation, so only the
  un-rematerialised program is comparable here; docs/MEMORY.md)."""
  from dots_jax.model import qwen2
  from dots_jax.tools import plan
  c = load_config("tiny", "micro")
  c.rl.batch_questions, c.sampling.group_size, c.rl.mini_batches = 4, 4, 1
  cfg = qwen2.Qwen2Config(vocab_size=4096, hidden_size=128, intermediate_size=512,
                          num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
  out = plan.compiled_programs(c, cfg, {"data": 1, "fsdp": 1, "tensor": 1}, seq=256)
  ratio = out["update"]["estimated"] / out["update"]["compiled"]
  assert 0.75 <= ratio <= 1.25, out["update"]


def test_compiled_plan_includes_the_rollout_program():
  """With the slot engine configured the dry run also compiles its decode program; the estimate
  (params, slot cache, logits) is the same order as the compiled bytes."""
  from dots_jax.model import qwen2
  from dots_jax.tools import plan
  c = load_config("tiny", "micro")
  c.sampling.slots = 16
  cfg = qwen2.Qwen2Config(vocab_size=4096, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
  out = plan.compiled_programs(c, cfg, {"data": 2, "fsdp": 1, "tensor": 1}, seq=24)
  ratio = out["rollout"]["estimated"] / out["rollout"]["compiled"]
  assert 0.5 <= ratio <= 2.0, out["rollout"]
  # ... and its prefill (insert) program, which writes prompts into the same slot cache
  assert out["prefill"]["compiled"] >= out["prefill"]["arguments"] > 0


def test_micro_batch_from_a_memory_budget():
  """rl.micro_batch = 0 with rl.memory_budget_gib: the largest micro-batch (dividing the
  mini-batch, a multiple of the data shards) whose estimate fits; a budget below one row per shard
  is one ConfigError naming the flag."""
  from dots_jax.config_common import ConfigError
  from dots_jax.tools import plan
  c = load_config("qwen1p5b_math", "")
  cfg, _ = plan.policy_shape(c)
  sizes = {"data": 8, "fsdp": 1, "tensor": 1}
  seq = max(c.data.prompt_buckets) + c.sampling.max_new_tokens
  c.rl.micro_batch = 0
  ucfg = settings.read(c).update
  rows = memory.update_rows(c.rl.batch_questions, c.sampling.group_size, 8)
  estimate = lambda m: memory.update_estimate(ucfg, cfg, sizes, seq, rows, grad=True,
                                              micro_batch=m)
  budget = (estimate(64) + estimate(128)) / 2 / 2**30  # 64 fits, 128 does not
  assert memory.fit_micro_batch(ucfg, cfg, sizes, seq, rows, budget).micro_batch == 64
  with pytest.raises(ConfigError, match="rl.memory_budget_gib"):
    memory.fit_micro_batch(ucfg, cfg, sizes, seq, rows, estimate(8) * 0.99 / 2**30)


def test_out_of_memory_refusals_are_parsed_and_other_errors_are_not():
  msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
         "temporaries (35.13G) exceeds available HBM (31.25G).")
  got = compiled.out_of_memory(RuntimeError(msg))
  assert got["wanted"] == int(35.13 * 2**30) and got["available"] == int(31.25 * 2**30)
  got = compiled.out_of_memory(RuntimeError(msg.replace("35.13G", "1.01T")))
  assert got["wanted"] == int(1.01 * 2**40)
  assert compiled.out_of_memory(RuntimeError("INVALID_ARGUMENT: shapes do not match")) is None


def test_tpu_topology_plan_reports_a_program_that_does_not_fit_and_finds_one_that_does():
  """The TPU compiler on compile-only v5e chips (15.75 GiB): an update whose full-vocabulary logits
  cannot fit is that program's `fits: False` with the compiler's own figures; the fit search's
  smaller micro-batch compiles, fits under the margin and needs fewer bytes. (A one-layer model:
  the logits of 8 rows x 8192 positions x 64000 words per chip are what does not fit.)"""
  pytest.importorskip("libtpu", reason="the TPU compiler needs libtpu: pip install -e '.[plan]'")
  from dots_jax.model import qwen2
  from dots_jax.tools import topology
  topo = topology.resolve("v5e:2x2")
  chips, hbm = topo.devices, topo.hbm_bytes
  assert hbm == int(15.75 * 2**30) and topo.platform == "tpu"
  c = load_config("tiny", "micro")
  c.rl.batch_questions, c.sampling.group_size, c.rl.mini_batches, c.rl.micro_batch = 8, 4, 1, 0
  c.sampling.slots = 0
  cfg = qwen2.Qwen2Config(vocab_size=64000, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
  sizes, seq = {"data": 4, "fsdp": 1, "tensor": 1}, 8192
  whole = plan.compiled_programs(c, cfg, sizes, seq, devices=chips, hbm_bytes=hbm,
                                 only=("update",))["update"]
  assert whole["fits"] is False and whole["wanted"] > whole["available"] == hbm
  found = plan.fit_update(c, cfg, sizes, seq, chips, hbm, margin=0.9)
  assert found is not None and found["micro_batch"] < 32 and found["compiled"] <= 0.9 * hbm
  assert found["compiled"] < whole["wanted"]
  # the least memory first (one row per data shard, full remat), then the configured remat (off),
  # then the micro-batch doubled until the next doubling does not fit
  tried = found["tried"]
  assert tried[0][:2] == ("nothing_saveable", 4) and tried[1][:2] == ("off", 4)
  assert [t[1] for t in tried[1:]] == [4 * 2**i for i in range(len(tried) - 1)]
  assert tried[-1][2] > 0.9 * hbm / 2**30 and found["micro_batch"] == tried[-2][1]


def test_dots_stage_programs_compile_and_the_embedding_pass_is_sharded_over_the_mesh():
  """DOTS methods add the backbone's embedding pass (over the run's mesh, in
  selection.dots.embed_dtype) and the estimator's step and prediction (one chip), compiled by the
  TPU compiler for v5e chips: a backbone whose weights exceed a chip's 15.75 GiB where the mesh
  does not shard them (a 4.5B-parameter embedding table on data 4) is reported as not fitting, and
  on fsdp 4 its quarter fits; the estimator's programs fit; a GRPO run has none of them."""
  pytest.importorskip("libtpu", reason="the TPU compiler needs libtpu: pip install -e '.[plan]'")
  import dataclasses

  from dots_jax.model import qwen2
  from dots_jax.tools import plan_dots, topology
  topo = topology.resolve("v5e:2x2")
  c = load_config("tiny", "micro")
  c.method = "dots"
  big = qwen2.Qwen2Config(vocab_size=1_100_000, hidden_size=4096, intermediate_size=128,
                          num_hidden_layers=1, num_attention_heads=32, num_key_value_heads=8)
  data4, fsdp4 = {"data": 4, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": 4, "tensor": 1}
  got = plan.compiled_programs(c, big, data4, 32, devices=topo.devices, hbm_bytes=topo.hbm_bytes,
                               quiet=True, only=tuple(sorted(plan.DOTS_PROGRAMS)))
  assert set(got) == plan.DOTS_PROGRAMS
  # the backbone is loaded as `question_embeddings` loads it: embed_dtype, unrolled, whatever the run's
  c.model.update(scan_layers=True, remat=True, dtype="bfloat16")
  shape, where = plan_dots.backbone_shape(c, dataclasses.replace(big, scan_layers=True, remat=True))
  assert (shape.dtype, shape.param_dtype, shape.scan_layers, shape.remat) == (
      "float32", "float32", False, False) and where == "the initial policy"
  assert got["embed"]["fits"] is False
  assert (got["embed"].get("arguments") or got["embed"]["wanted"]) >= 1_100_000 * 4096 * 4
  assert got["estimator_fit"]["fits"] and got["estimator_predict"]["fits"]
  # the estimator's input is the backbone's width: its first adapter layer is 4096 x 256 per adapter
  assert got["estimator_fit"]["arguments"] > 2 * 4096 * c.selection.dots.width * 4
  assert plan_dots.fit_embed(c, big, topo.devices, data4, topo.hbm_bytes, 0.9) is None
  sharded = plan.compiled_programs(c, big, fsdp4, 32, devices=topo.devices,
                                   hbm_bytes=topo.hbm_bytes, quiet=True, only=("embed",))["embed"]
  assert sharded["fits"] and sharded["arguments"] < 1_100_000 * 4096 * 4 / 3
  c.selection.dots.embed_dtype = "bfloat16"
  assert plan_dots.backbone_shape(c, big)[0].param_dtype == "bfloat16"
  half = plan.compiled_programs(c, big, fsdp4, 32, devices=topo.devices,
                                hbm_bytes=topo.hbm_bytes, quiet=True, only=("embed",))["embed"]
  assert half["arguments"] < 0.6 * sharded["arguments"]
  c.selection.dots.embed_dtype = "float32"
  # activations, not weights: long questions in a large batch on one chip; the search halves
  # embed_batch; over 4 data shards each chip takes a quarter of the rows
  one = {"data": 1, "fsdp": 1, "tensor": 1}
  wide = qwen2.Qwen2Config(vocab_size=256, hidden_size=4096, intermediate_size=256,
                           num_hidden_layers=1, num_attention_heads=32, num_key_value_heads=8)
  c.data.prompt_buckets, c.selection.dots.embed_max_len, c.selection.dots.embed_batch = (2048,), 0, 64
  found = plan_dots.fit_embed(c, wide, topo.devices, one, topo.hbm_bytes, 0.9)
  assert found is not None and found["embed_batch"] < 64 and found["compiled"] <= 0.9 * topo.hbm_bytes
  assert found["tried"][0][0] == 64 and found["tried"][0][1] > 0.9 * topo.hbm_bytes
  split = plan_dots.fit_embed(c, wide, topo.devices, data4, topo.hbm_bytes, 0.9)
  # 64 rows over 4 shards take what 16 rows take on one chip
  assert split["tried"][0][0] == 64 and split["tried"][0][1] <= 1.05 * dict(found["tried"])[16]
  # the dry run hands over the configured batch it already compiled: that one is not compiled again
  refused = {"compiled": None, "wanted": 123, "fits": False}
  again = plan_dots.fit_embed(c, wide, topo.devices, one, topo.hbm_bytes, 0.9, configured=refused)
  assert again["tried"] == [(64, 123)] + found["tried"][1:] and again["embed_batch"] == found["embed_batch"]
  c.method = "grpo"
  assert not plan.DOTS_PROGRAMS & set(plan.compiled_programs(
      c, big, data4, 32, devices=topo.devices, hbm_bytes=topo.hbm_bytes, quiet=True,
      only=("embed",)))


def test_step_roofline_by_hand():
  """Two chips (data 2), 10 answers of 6 tokens after 4-token prompts through 5 slots, 8 trained
  rows: the rollout is bandwidth-bound at these peaks; pi_old one forward, the update three (four
  under remat), all over both chips' FLOP/s."""
  import numpy as np
  from dots_jax.model import qwen2, roofline
  cfg = qwen2.Qwen2Config(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, dtype="bfloat16")
  peaks = {"flops": 1e6, "hbm": 1e3, "source": "test"}
  r = roofline.step_roofline(cfg, completions=10, prompt_len=4, answer_len=6, train_rows=8,
                             sizes={"data": 2, "fsdp": 1, "tensor": 1}, slots=5, peaks=peaks)
  fwd = roofline.forward_flops(cfg, np.array([10]))
  w = roofline.matmul_params(cfg)
  assert fwd == 2 * w * 10 + 4 * 2 * 2 * 2 * sum(range(1, 11))
  compute_s = 10 * fwd / 2e6
  # 12 decode steps (60 answer tokens / 5 slots); a step reads the weights (bf16) and 2.5 slots'
  # keys and values at the mean context 4 + 3 (2 layers x 1 KV head x 2 dims x 2 x 2 bytes).
  bandwidth_s = 12 * (w * 2 + 2.5 * 7 * (2 * 2 * 1 * 2 * 2)) / 1e3
  assert r.rollout_s == pytest.approx(max(compute_s, bandwidth_s))
  assert r.rollout_bound == ("compute" if compute_s >= bandwidth_s else "HBM bandwidth")
  assert r.pi_old_s == pytest.approx(8 * fwd / 2e6) and r.update_s == pytest.approx(3 * 8 * fwd / 2e6)
  assert r.mfu_ceiling == pytest.approx((10 * fwd + 4 * 8 * fwd) / (2e6 * r.step_s))


def test_tpu_slice_names_map_to_topologies():
  from dots_jax.config_common import ConfigError
  from dots_jax.tools import topology
  assert topology.tpu_topology_name("v5p-16") == "v5p:2x2x2"  # v5p counts TensorCores, 2 a chip
  assert topology.tpu_topology_name("v5p-8") == "v5p:2x2x1"
  assert topology.tpu_topology_name("v6e-8") == "v6e:2x4"
  assert topology.tpu_topology_name("v5litepod-16") == "v5e:4x4"
  assert topology.tpu_topology_name("v6e:4x4") == "v6e:4x4"
  with pytest.raises(ConfigError, match="v5p slices are v5p-8, v5p-16"):
    topology.tpu_topology_name("v5p-12")
  with pytest.raises(ConfigError, match="no spec for GPU 'a100'"):
    topology.resolve("a100x8")


def test_fit_search_tries_meshes_then_dtypes_and_climbs_the_remat_ladder(monkeypatch):
  """Without compiling: candidate meshes keep the chips (data into fsdp, then fsdp x tensor where
  the heads divide); dtypes change only after every mesh failed; an update that fits only on
  fsdp 2 x tensor 2 with bfloat16 activations and full remat is found there, and the overrides
  say so."""
  import dataclasses

  from dots_jax.model import qwen2
  c = load_config("tiny", "micro")
  c.model.remat = False
  c.rl.micro_batch = 8
  assert plan.remat_candidates(c) == list(plan.REMAT_LADDER)
  c2 = c.copy_and_resolve_references()
  c2.model.update(remat=True, remat_policy="nothing_saveable")
  assert plan.remat_candidates(c2) == [(True, "nothing_saveable")]
  cfg = qwen2.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
  sizes = {"data": 4, "fsdp": 1, "tensor": 1}
  assert plan.mesh_candidates(sizes, cfg) == [
      sizes, {"data": 1, "fsdp": 4, "tensor": 1}, {"data": 1, "fsdp": 2, "tensor": 2}]
  odd = dataclasses.replace(cfg, num_key_value_heads=1)  # one KV head: no tensor axis
  assert plan.mesh_candidates(sizes, odd) == [sizes, {"data": 1, "fsdp": 4, "tensor": 1}]
  assert plan.dtype_candidates(c) == [
      {}, {"model.activation_dtype": "bfloat16"},
      {"model.activation_dtype": "bfloat16", "rl.mu_dtype": "bfloat16"}]
  tried = []

  def fake_update(config, cfg, sizes, seq, chips, hbm, remat, micro):
    key = (tuple(sizes.values()), config.model.activation_dtype, config.rl.mu_dtype, remat, micro)
    tried.append(key)
    ok = (sizes["tensor"] == 2 and config.model.activation_dtype == "bfloat16"
          and remat == (True, "nothing_saveable") and micro <= 4)
    return {"compiled": 50 if ok else 99, "fits": ok}

  monkeypatch.setattr(plan, "_update_at", fake_update)
  monkeypatch.setattr(plan, "fit_rollout", lambda *a: None)
  found = plan.fit_search(c, cfg, sizes, 64, [], 100,
                          plan.PlanSettings(topology="fake", device_gib=0.0, compile=False,
                                            device="", fit_margin=0.9))
  least = (True, "nothing_saveable")
  f32, bf16 = ("float32", "float32"), ("bfloat16", "float32")
  meshes = [(4, 1, 1), (1, 4, 1), (1, 2, 2)]
  # every mesh's probe (one row per data shard, full remat) before any dtype changes
  assert tried[:6] == [(m, *d, least, 4 if m[2] == 1 else 2) for d in (f32, bf16) for m in meshes]
  # on the fitting mesh: the configured remat (off), dots-saveable, then the micro-batch doubled
  assert tried[6:] == [((1, 2, 2), *bf16, (False, "nothing_saveable"), 2),
                       ((1, 2, 2), *bf16, (True, "dots_with_no_batch_dims_saveable"), 2),
                       ((1, 2, 2), *bf16, least, 4), ((1, 2, 2), *bf16, least, 8)]
  assert found["overrides"] == {"mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 2,
                                "model.activation_dtype": "bfloat16", "model.remat": True,
                                "model.remat_policy": "nothing_saveable", "rl.micro_batch": 4}


def test_gpu_topology_compiles_the_micro_config_with_the_cuda_plugin():
  """An H100 described by the shipped spec, no GPU present: the micro config's programs compile
  with XLA's GPU compiler and are held against the spec's 79.14 GiB."""
  pytest.importorskip("jax_plugins.xla_cuda12",
                      reason="the GPU compiler needs the CUDA plugin: pip install -e '.[plan-gpu]'")
  from dots_jax.model import qwen2
  from dots_jax.tools import topology
  topo = topology.resolve("h100x2")
  assert topo.platform == "cuda" and len(topo.devices) == 2
  assert topo.hbm_bytes == 84978434048 and "H100" in topo.devices[0].device_kind
  c = load_config("tiny", "micro")
  c.sampling.slots = 8  # the slot engine: its decode and prefill programs too
  cfg = qwen2.Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
  got = plan.compiled_programs(c, cfg, {"data": 2, "fsdp": 1, "tensor": 1}, 32,
                               devices=topo.devices, hbm_bytes=topo.hbm_bytes, quiet=True)
  assert {"pi_old", "update", "rollout", "prefill"} <= set(got)
  assert all(p["fits"] and 0 < p["compiled"] < 2**30 for p in got.values())
  assert got["update"]["temp"] > 0
