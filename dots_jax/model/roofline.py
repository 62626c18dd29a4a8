"""What a program costs at best on a chip: model FLOPs and bytes of the passes an RL step runs, the
chips' published peaks, and one RL step's roofline time split into rollout / pi_old / update.

The FLOP count is the standard model-FLOPs one (2 per weight per token plus causal attention's
QK^T and PV; a backward pass twice the forward; remat's recompute counted separately, as MFU leaves
it out). `cost_analysis()` of compiled programs is not used: a scanned 28-layer stack reports about
one layer, and TPU compiles count sharded matmuls about half (docs/MEMORY.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dots_jax.model import qwen2

# device_kind substring -> (dense bfloat16 TFLOP/s, HBM TB/s, source). First match wins.
PEAKS: tuple[tuple[str, float, float, str], ...] = (
    ("H200", 989.0, 4.8, "NVIDIA H200 SXM datasheet (989 TFLOP/s dense BF16, 4.8 TB/s HBM3e)"),
    ("H100", 989.0, 3.35, "NVIDIA H100 SXM datasheet (989 TFLOP/s dense BF16, 3.35 TB/s HBM3)"),
    ("A100", 312.0, 2.039, "NVIDIA A100 80GB SXM datasheet (312 TFLOP/s BF16, 2.039 TB/s)"),
    ("v5 lite", 197.0, 0.819, "Cloud TPU v5e docs (197 TFLOP/s bf16, 819 GB/s per chip)"),
    ("v5e", 197.0, 0.819, "Cloud TPU v5e docs (197 TFLOP/s bf16, 819 GB/s per chip)"),
    ("v5p", 459.0, 2.765, "Cloud TPU v5p docs (459 TFLOP/s bf16, 2,765 GB/s per chip)"),
    ("v6 lite", 918.0, 1.64, "Cloud TPU v6e docs (918 TFLOP/s bf16, 1,640 GB/s per chip)"),
    ("v6e", 918.0, 1.64, "Cloud TPU v6e docs (918 TFLOP/s bf16, 1,640 GB/s per chip)"),
    ("TPU v5", 459.0, 2.765, "Cloud TPU v5p docs (459 TFLOP/s bf16, 2,765 GB/s per chip)"),
)


def peaks_for(kind: str, tflops: float, tbps: float) -> dict[str, Any]:
  """Peak bf16 FLOP/s and HBM bytes/s for `kind` (flags win over the table)."""
  for key, t, b, src in PEAKS:
    if key.lower() in kind.lower():
      return {"flops": (tflops or t) * 1e12, "hbm": (tbps or b) * 1e12,
              "source": "flags" if tflops and tbps else src}
  return {"flops": tflops * 1e12 if tflops else None, "hbm": tbps * 1e12 if tbps else None,
          "source": "flags" if tflops or tbps else f"no peaks known for {kind!r}"}


def matmul_params(cfg: qwen2.Qwen2Config) -> int:
  """Weights every token multiplies: the decoder layers' and the vocabulary head (embedding
  lookups are not matmuls)."""
  return cfg.num_hidden_layers * cfg.params_per_layer + cfg.vocab_size * cfg.hidden_size


def forward_flops(cfg: qwen2.Qwen2Config, seq_lens: np.ndarray, new_from: int = 0) -> float:
  """Model FLOPs of a forward pass over sequences of `seq_lens` tokens (positions >= `new_from`
  only: a prefill continues nothing, a decode step is one position): 2 per weight per token, plus
  causal attention's QK^T and PV (4 x heads x head_dim per attended key)."""
  per_key = 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim
  total = 0.0
  for t in np.asarray(seq_lens, np.int64).ravel():
    pos = np.arange(new_from, t)
    total += 2.0 * matmul_params(cfg) * len(pos) + per_key * float(np.sum(pos + 1))
  return total


def decode_step_bytes(cfg: qwen2.Qwen2Config, slots: int, window: int) -> int:
  """What one decode step must read: every weight in the compute dtype and the slots' keys and
  values over the window."""
  w = np.dtype(cfg.dtype).itemsize
  kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * w
  return int(matmul_params(cfg) * w + slots * window * kv)



@dataclasses.dataclass(frozen=True)
class StepRoofline:
  """One RL step at best on `chips` chips: seconds per phase and what bounds it."""

  rollout_s: float
  rollout_bound: str  # "compute" or "HBM bandwidth"
  pi_old_s: float
  update_s: float
  model_flops: float  # rollout + pi_old forwards + the update's forward and backward
  chips: int
  peak_flops: float

  @property
  def step_s(self) -> float:
    return self.rollout_s + self.pi_old_s + self.update_s

  @property
  def mfu_ceiling(self) -> float:
    """Model FLOPs / (chips x peak x the step's best time): no schedule of this step does better."""
    return self.model_flops / (self.chips * self.peak_flops * self.step_s)


def step_roofline(cfg: qwen2.Qwen2Config, *, completions: int, prompt_len: int,
                  answer_len: float, train_rows: int, sizes: dict[str, int], slots: int,
                  peaks: dict[str, Any]) -> StepRoofline:
  """The best time of one RL step on a mesh of `sizes` chips: `completions` answers of
  `answer_len` tokens (mean) after prompts of `prompt_len` decoded through `slots` KV-cache slots
  (all chips together), then pi_old and the update over `train_rows` rows of prompt + answer.

  Rollout: the larger of its FLOPs over all chips' peak and its decode steps' reads (the weights
  in the compute dtype, all of them but the tensor shard's, fsdp gathering them per layer; the chip's
  share of the live slots' keys and values at the mean context) over each chip's bandwidth. pi_old and the update are compute-bound (one forward;
  forward + backward, plus one more forward under remat)."""
  chips = int(np.prod(list(sizes.values())))
  tensor = sizes.get("tensor", 1)
  w = np.dtype(cfg.dtype).itemsize
  seq = int(round(prompt_len + answer_len))
  fwd_row = forward_flops(cfg, np.array([seq]))
  rollout_flops = completions * fwd_row  # each answer's whole sequence once (prefill + decode)
  compute_s = rollout_flops / (chips * peaks["flops"])
  steps = completions * answer_len / max(slots, 1)
  kv_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * w
  # Slots are spread over the data-parallel axes (data and fsdp); under fsdp a chip reads the
  # gathered weights of every layer, so each chip reads all weights but its tensor shard's.
  per_chip_slots = slots / max(sizes.get("data", 1) * sizes.get("fsdp", 1), 1)
  step_bytes = (matmul_params(cfg) * w / tensor
                + per_chip_slots * (prompt_len + answer_len / 2) * kv_token / tensor)
  bandwidth_s = steps * step_bytes / peaks["hbm"]
  train_fwd = train_rows * fwd_row
  pi_old_s = train_fwd / (chips * peaks["flops"])
  update_s = (4 if cfg.remat else 3) * train_fwd / (chips * peaks["flops"])
  return StepRoofline(
      rollout_s=max(compute_s, bandwidth_s),
      rollout_bound="compute" if compute_s >= bandwidth_s else "HBM bandwidth",
      pi_old_s=pi_old_s, update_s=update_s,
      model_flops=rollout_flops + train_fwd + 3 * train_fwd, chips=chips,
      peak_flops=peaks["flops"])
