"""Prompts: the tokenizer's chat template, named system prompts, length limits with counts."""

import pytest

from dots_jax.config_base import base_config
from dots_jax.data.prompts import SYSTEM_PROMPTS, build_prompt, build_prompts
from dots_jax.policy.tokenizer import make_char_tokenizer


@pytest.fixture(scope="module")
def tok():
  return make_char_tokenizer()


def test_system_prompts_are_the_published_strings():
  assert SYSTEM_PROMPTS["qwen_math"] == ("Please reason step by step, and put your final answer within "
                                         "\\boxed{}.")
  # The DOTS parquet's system message, trailing space included.
  assert SYSTEM_PROMPTS["dots"] == "Let's think step by step and output the final answer within \\boxed{}. "


def test_chat_template_from_tokenizer(tok):
  ids = build_prompt(tok, "1+1=", "dots", chat_template=True)
  assert tok.decode(ids) == ("<|im_start|>system\n" + SYSTEM_PROMPTS["dots"] + "<|im_end|>\n"
                             "<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n")
  assert ids == tok.apply_chat_template(
      [{"role": "system", "content": SYSTEM_PROMPTS["dots"]}, {"role": "user", "content": "1+1="}],
      tokenize=True, add_generation_prompt=True, return_dict=False)
  no_system = tok.decode(build_prompt(tok, "1+1=", "none", chat_template=True))
  assert no_system == "<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n"


def test_plain_prompt_and_errors(tok):
  assert tok.decode(build_prompt(tok, "12+3=", "none", chat_template=False)) == "12+3="
  assert tok.decode(build_prompt(tok, "x?", "qwen_math", chat_template=False)) == \
      SYSTEM_PROMPTS["qwen_math"] + "\n\nx?"
  with pytest.raises(ValueError, match="unknown system prompt 'cot'"):
    build_prompt(tok, "x", "cot", chat_template=False)


@pytest.mark.parametrize("mode,kept,counts", [
    ("drop", [0, 2], {"total": 3, "kept": 2, "dropped": 1}),
    ("left", [0, 1, 2], {"total": 3, "kept": 3, "truncated": 1}),
])
def test_length_limit_counts(tok, mode, kept, counts):
  data = base_config().data
  data.update(system_prompt="none", chat_template=False, max_prompt_tokens=8, prompt_overflow=mode)
  batch = build_prompts(tok, ["1+2=", "123456789+1=", "9*9="], data)
  assert batch.kept == kept and dict(+batch.counts) == counts
  assert all(len(t) <= 8 for t in batch.tokens)
  if mode == "left":
    assert tok.decode(batch.tokens[1]) == "56789+1="  # the end of the question survives


def test_length_limit_error_mode(tok):
  data = base_config().data
  data.update(chat_template=False, max_prompt_tokens=4, prompt_overflow="error")
  with pytest.raises(ValueError, match="question 1: prompt has 12 tokens > config.data.max_prompt_tokens=4"):
    build_prompts(tok, ["1+2", "123456789+1="], data)


def test_greso_user_template_wraps_the_problem(tok):
  from dots_jax.data.prompts import USER_TEMPLATES
  text = USER_TEMPLATES["greso"].replace("{problem}", "1+1=?")
  assert text.startswith("Please solve the following math problem: 1+1=?. The assistant first")
  assert text.endswith("for example \\boxed{1}. Let's solve this step by step. ")
  with pytest.raises(ValueError, match="user_template"):
    build_prompt(tok, "x", "none", chat_template=False, user_template="nope")
  assert tok.decode(build_prompt(tok, "7", "none", chat_template=False, user_template="greso")) == \
      USER_TEMPLATES["greso"].replace("{problem}", "7")
