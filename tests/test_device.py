"""The accelerator suite (`python -m dots_jax.bench.device`) at micro shapes on CPU: its JSON's
arithmetic recomputed from the stored bytes, FLOPs, times and log-probs; its imports; its shapes
against the reference config."""

import json
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from config_files import load_config
from dots_jax.bench import device
from dots_jax.model import qwen2

PEAK_TFLOPS, HBM_TBPS = 1.0, 0.05


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  out = tmp_path_factory.mktemp("device") / "device.json"
  fv = flags.FlagValues()
  device.define_flags(fv)
  fv(["device", "--micro", f"--peak_tflops={PEAK_TFLOPS}", f"--hbm_tbps={HBM_TBPS}", f"--out={out}"])
  device.run(fv)
  with open(out) as f:
    return json.load(f)


def test_roofline_fractions_and_mfu_follow_from_the_stored_figures(report):
  assert report["peaks"] == {"flops": PEAK_TFLOPS * 1e12, "hbm": HBM_TBPS * 1e12,
                             "source": "flags"}
  r, u = report["rollout"], report["update"]
  assert r["decode_roofline_s"] == pytest.approx(r["decode_step_bytes"] / (HBM_TBPS * 1e12))
  assert r["decode_hbm_fraction"] == pytest.approx(r["decode_roofline_s"] / r["decode_step_s"])
  assert r["prefill_flop_fraction"] == pytest.approx(
      r["prefill_flops"] / r["prefill_s"] / (PEAK_TFLOPS * 1e12))
  assert r["useful_tokens_per_s"] == pytest.approx(r["useful_tokens"] / r["generate_s"])
  assert 0 < r["slot_utilisation"] <= 1 and r["programs_traced_while_timed"] == 0
  assert u["update_flops"] == pytest.approx(3 * u["pi_old_flops"])
  assert u["update_mfu"] == pytest.approx(u["update_flops"] / u["update_s"] / 1e12)
  assert u["pi_old_mfu"] == pytest.approx(u["pi_old_flops"] / u["pi_old_s"] / 1e12)
  assert u["update_tokens_per_s"] == pytest.approx(u["rows"] * u["seq"] / u["update_s"])
  assert report["total_s"] > 0 and report["table"][0].startswith("device")


def test_gap_figures_follow_from_the_stored_logprobs(report):
  g = report["gap"]
  m = np.asarray(g["mask"]) > 0
  d = np.abs(np.asarray(g["old_logp"]) - np.asarray(g["sampler_logp"]))[m]
  assert g["tokens"] == m.sum() > 0
  assert g["logp_gap_max"] == pytest.approx(d.max(), abs=1e-7)
  assert g["logp_gap_mean"] == pytest.approx(d.mean(), abs=1e-7)
  assert g["logp_gap_p99"] == pytest.approx(np.quantile(d, 0.99), abs=1e-6)


def test_reference_and_end_to_end_sections(report):
  t = report["torch"]
  assert t["generate_ratio"] == pytest.approx(t["generate_s"] / t["ours_generate_s"])
  assert t["train_tokens_per_s"] == pytest.approx(t["train_rows"] * t["train_seq"] / t["train_s"])
  steps = report["e2e"]["steps"]
  assert [s["step"] for s in steps] == [0, 1, 2]
  assert steps[0]["replayed_groups"] == 0 and steps[0]["reference_s"] > 0
  assert all(s["replayed_groups"] > 0 for s in steps[1:])
  for s in steps:
    parts = s["reference_s"] + s["rollout_s"] + s["pi_old_s"] + s["update_s"]
    assert parts <= s["step_s"] + 1e-6


def test_model_flops_and_decode_bytes_by_hand():
  cfg = qwen2.Qwen2Config(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, dtype="bfloat16")
  weights = 2 * cfg.params_per_layer + 10 * 4
  assert device.matmul_params(cfg) == weights
  # 3 tokens: 2 FLOPs per weight each, and attention to 1, 2, 3 keys at 4 x layers x heads x hd.
  assert device.forward_flops(cfg, np.array([3])) == 2 * weights * 3 + 4 * 2 * 2 * 2 * (1 + 2 + 3)
  assert device.forward_flops(cfg, np.array([3]), new_from=2) == 2 * weights + 4 * 2 * 2 * 2 * 3
  # Weights in bf16 and keys + values of 5 slots x 7 positions x 2 layers x 1 kv head x 2 dims.
  assert device.decode_step_bytes(cfg, 5, 7) == weights * 2 + 5 * 7 * 2 * 2 * 1 * 2 * 2


def test_peaks_by_device_kind_and_flags():
  assert device.peaks_for("NVIDIA H200", 0, 0)["flops"] == 989e12
  assert device.peaks_for("NVIDIA H100 80GB HBM3", 0, 0)["hbm"] == 3.35e12
  assert device.peaks_for("TPU v6 lite", 0, 0)["hbm"] == 1.64e12
  assert device.peaks_for("cpu", 0, 0)["flops"] is None
  assert device.peaks_for("NVIDIA H200", 790, 4.3) == {"flops": 790e12, "hbm": 4.3e12,
                                                       "source": "flags"}


def test_the_suite_imports_nothing_a_bare_accelerator_image_lacks():
  code = ("import sys, dots_jax.bench.device; "
          "print(sorted(m for m in ('ml_collections', 'math_verify', 'tensorflow_datasets', "
          "'tensorboardX', 'array_record', 'wandb', 'gcsfs') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout


def test_full_shape_is_the_reference_configs():
  c = load_config("qwen1p5b_math", "")
  import types
  full = device.Shape.for_args(types.SimpleNamespace(micro=False, quick=False, variant="Math-1.5B"))
  assert full.group == c.sampling.group_size
  assert full.cap == c.sampling.max_new_tokens
  assert full.logits_chunk == c.rl.logits_chunk and full.attn_chunk == c.model.attn_chunk
  assert full.prompt_len in c.data.prompt_buckets
  assert full.e2e_prompts * full.group == full.update_rows  # the e2e steps reuse its program
  cfg = full.model_config(micro=False)
  assert (cfg.dtype, cfg.remat, cfg.scan_layers) == (c.model.dtype, c.model.remat,
                                                     c.model.scan_layers)
