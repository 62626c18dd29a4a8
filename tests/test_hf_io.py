"""Loading, export and bad-input errors of dots_jax.model.hf_io; the tiny tokenizer."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from dots_jax.model import hf_io
from dots_jax.policy import tokenizer as tiny_tokenizer
from dots_jax.tools import parity
from hf_fixtures import make_tiny_hf_checkpoint


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
  return make_tiny_hf_checkpoint(tmp_path_factory.mktemp("untied"))


@pytest.fixture
def ckpt_copy(ckpt_dir, tmp_path):
  return shutil.copytree(ckpt_dir, tmp_path / "ckpt")


def _hf_logits(path, tokens):
  model = transformers.Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  with torch.no_grad():
    return model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def _our_logits(model, tokens):
  return np.asarray(parity._forward(model, tokens, np.ones_like(tokens)))


TOKENS = np.array([[5, 17, 42, 3, 99, 0, 2, 64]], np.int32)


@pytest.mark.parametrize("tie,shard", [(False, "5GB"), (True, "10KB")])
def test_export_round_trip(tmp_path, tie, shard):
  src = make_tiny_hf_checkpoint(tmp_path / "src", tie=tie, seed=3)
  cfg, model = hf_io.load_policy(src)
  out = hf_io.export_policy(cfg, model, tmp_path / "out", tokenizer_dir=src, max_shard_size=shard)
  files = os.listdir(out)
  assert ("model.safetensors.index.json" in files) == (shard == "10KB")
  assert {"config.json", "generation_config.json", "tokenizer.json"} <= set(files)
  exported = set()
  for f in files:
    if f.endswith(".safetensors"):
      exported |= set(load_file(os.path.join(out, f)))
  assert ("lm_head.weight" in exported) == (not tie)
  # transformers loads the export and gives identical logits to the original checkpoint.
  np.testing.assert_array_equal(_hf_logits(out, TOKENS), _hf_logits(src, TOKENS))
  # And we load our own export back to the same model.
  cfg2, model2 = hf_io.load_policy(out)
  assert cfg2 == cfg
  np.testing.assert_array_equal(_our_logits(model2, TOKENS), _our_logits(model, TOKENS))
  assert hf_io.load_tokenizer(out).chat_template == hf_io.load_tokenizer(src).chat_template


def test_bfloat16_checkpoint_is_cast(tmp_path):
  src = make_tiny_hf_checkpoint(tmp_path, dtype=torch.bfloat16)
  _, model = hf_io.load_policy(src, param_dtype="float32")
  assert model.embed_tokens.embedding.get_value().dtype == np.float32
  _, model_bf16 = hf_io.load_policy(src, param_dtype="bfloat16")
  assert str(model_bf16.embed_tokens.embedding.get_value().dtype) == "bfloat16"
  # bf16 -> f32 is exact, so f32 parity with transformers (upcast on its side) still holds.
  np.testing.assert_allclose(_our_logits(model, TOKENS), _hf_logits(src, TOKENS), atol=1e-4)


def test_missing_config(ckpt_copy):
  os.remove(ckpt_copy / "config.json")
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_io.load_policy(ckpt_copy)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf_io.load_policy(ckpt_copy / "nope")


def test_not_qwen2(ckpt_copy):
  cfg = json.loads((ckpt_copy / "config.json").read_text())
  cfg.update(architectures=["LlamaForCausalLM"], model_type="llama")
  (ckpt_copy / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="LlamaForCausalLM.*only Qwen2ForCausalLM"):
    hf_io.load_policy(ckpt_copy)


@pytest.mark.parametrize("key,value,match", [
    ("use_sliding_window", True, "use_sliding_window"),
    ("rope_scaling", {"type": "yarn", "factor": 4.0}, "rope_scaling type 'yarn'"),
])
def test_unsupported_features(ckpt_copy, key, value, match):
  cfg = json.loads((ckpt_copy / "config.json").read_text())
  cfg[key] = value
  (ckpt_copy / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=match):
    hf_io.load_policy(ckpt_copy)


def _rewrite(path, edit):
  f = os.path.join(path, "model.safetensors")
  tensors = load_file(f)
  edit(tensors)
  save_file(tensors, f, metadata={"format": "pt"})


def test_missing_tensor(ckpt_copy):
  _rewrite(ckpt_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ValueError, match=r"lacks 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
    hf_io.load_policy(ckpt_copy)


def test_misshaped_tensor(ckpt_copy):
  def edit(t):
    t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
  _rewrite(ckpt_copy, edit)
  with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight .*"
                                       r"shape \(8, 32\) but the config needs \(16, 32\)"):
    hf_io.load_policy(ckpt_copy)


def test_unexpected_tensor(ckpt_copy):
  def edit(t):
    t["model.layers.0.mlp.extra.weight"] = np.zeros((2,), np.float32)
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros((4,), np.float32)  # ignored
  _rewrite(ckpt_copy, edit)
  with pytest.raises(ValueError, match=r"1 tensor\(s\).*model\.layers\.0\.mlp\.extra\.weight"):
    hf_io.load_policy(ckpt_copy)
  _, model = hf_io.load_policy(ckpt_copy, allow_unexpected=True)
  np.testing.assert_allclose(_our_logits(model, TOKENS), _hf_logits(ckpt_copy, TOKENS), atol=1e-4)


def test_tied_checkpoint_with_lm_head(tmp_path):
  path = make_tiny_hf_checkpoint(tmp_path, tie=True)
  _rewrite(path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
  hf_io.load_policy(path)  # equal copy: accepted
  _rewrite(path, lambda t: t.update({"lm_head.weight": t["lm_head.weight"] + 1.0}))
  with pytest.raises(ValueError, match="lm_head.weight.*differs"):
    hf_io.load_policy(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(ckpt_copy, damage):
  f = ckpt_copy / "model.safetensors"
  if damage == "truncate":
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) - 100)
  else:
    f.write_bytes(b"not a safetensors file" * 4)
  with pytest.raises(ValueError, match="model.safetensors"):
    hf_io.load_policy(ckpt_copy)


def test_missing_shard_file(tmp_path):
  path = make_tiny_hf_checkpoint(tmp_path, max_shard_size="20KB")
  os.remove(os.path.join(path, "model-00002-of-00007.safetensors"))
  with pytest.raises(FileNotFoundError, match="model-00002-of-00007.safetensors"):
    hf_io.load_policy(path)


def test_char_tokenizer(tmp_path):
  tok = tiny_tokenizer.make_char_tokenizer(tmp_path)
  loaded = hf_io.load_tokenizer(tmp_path)
  assert loaded.convert_ids_to_tokens([0, 1, 2, 3]) == list(tiny_tokenizer.SPECIAL_TOKENS)
  assert (loaded.pad_token_id, loaded.eos_token_id) == (tiny_tokenizer.PAD_ID, tiny_tokenizer.IM_END_ID)
  assert len(loaded) == 4 + len(tiny_tokenizer.DEFAULT_ALPHABET)
  ids = loaded.encode("12+3=?", add_special_tokens=False)
  assert ids == [4 + tiny_tokenizer.DEFAULT_ALPHABET.index(c) for c in "12+3=?"]
  assert loaded.decode(ids) == "12+3=?"
  assert loaded.encode("é", add_special_tokens=False) == [tiny_tokenizer.UNK_ID]
  msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "2*3"}]
  text = loaded.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
  assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n2*3<|im_end|>\n<|im_start|>assistant\n"
  assert loaded.encode(text, add_special_tokens=False)[:1] == [tiny_tokenizer.IM_START_ID]
  assert tok.chat_template == loaded.chat_template
  small = tiny_tokenizer.make_char_tokenizer(alphabet="0123456789 ")
  assert len(small) == 15
  with pytest.raises(ValueError, match="repeats"):
    tiny_tokenizer.make_char_tokenizer(alphabet="aab")
  with pytest.raises(FileNotFoundError, match="no tokenizer files"):
    hf_io.load_tokenizer(tmp_path / "missing")
