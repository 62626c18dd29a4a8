"""A tiny character-level tokenizer with Qwen2.5's chat special tokens and chat template.

Ids are fixed so tests and the tiny default policy can rely on them:
  0 `<|endoftext|>` (pad, and end of a plain-text document, as in Qwen2.5)
  1 `<|im_start|>`
  2 `<|im_end|>` (end of a chat turn: the EOS a chat policy generates)
  3 `<unk>` (any character outside the alphabet; Qwen2.5 itself is byte-level and never needs one)
  4.. one id per alphabet character, in alphabet order.
"""

from __future__ import annotations

import os
import string

import transformers
from tokenizers import Tokenizer, decoders, models

ENDOFTEXT, IM_START, IM_END, UNK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, UNK)
PAD_ID, IM_START_ID, IM_END_ID, UNK_ID = 0, 1, 2, 3

# Digits and arithmetic first (the synthetic task), then what prompts and \boxed{} answers use.
DEFAULT_ALPHABET = (string.digits + "+-*/=() ?\n.,:;!'\"{}[]\\^_<>%$#&|~`@" + string.ascii_lowercase
                    + string.ascii_uppercase)

# Qwen2.5's template without its tool-calling branches and without the default system message
# ("You are Qwen, created by Alibaba Cloud...") which alone would overflow a tiny prompt budget.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def make_char_tokenizer(out_dir: str | os.PathLike | None = None,
                        alphabet: str = DEFAULT_ALPHABET) -> transformers.PreTrainedTokenizerFast:
  """Builds the tokenizer (vocab size 4 + len(alphabet)); saves it as a HF directory if `out_dir`."""
  if len(set(alphabet)) != len(alphabet):
    dupes = sorted({c for c in alphabet if alphabet.count(c) > 1})
    raise ValueError(f"alphabet repeats characters {dupes!r}")
  vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
  vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(alphabet)})
  # BPE with no merges splits text into single characters; Fuse joins them back without spaces.
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
  tok.decoder = decoders.Fuse()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token=IM_END, pad_token=ENDOFTEXT, unk_token=UNK,
      additional_special_tokens=[IM_START], chat_template=CHAT_TEMPLATE,
      model_max_length=32768, padding_side="left", clean_up_tokenization_spaces=False)
  if out_dir is not None:
    fast.save_pretrained(os.fspath(out_dir))
  return fast
