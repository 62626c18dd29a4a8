"""Prompt construction: the tokenizer's own chat template plus a named system prompt.

The chat template is read from the tokenizer (`tokenizer.apply_chat_template`), so a Qwen2.5 checkpoint
gets exactly its own `<|im_start|>` format. With `chat_template=False` the prompt is plain text:
system prompt, blank line, problem (the base-model convention of Qwen2.5-Math's evaluation harness).
"""

import collections
import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from dots_jax.config_common import ConfigError

SYSTEM_PROMPTS: dict[str, str | None] = {
    "none": None,
    "qwen_math": "Please reason step by step, and put your final answer within \\boxed{}.",  # Qwen2.5-Math
    # The DOTS training parquet's system message, trailing space included
    # (ASTRAL-Group/data-efficient-llm-rl rl_training/data/deepscaler.parquet, column prompt).
    "dots": "Let's think step by step and output the final answer within \\boxed{}. ",
}
# The user message around the problem ("{problem}" is replaced; other braces are literal).
USER_TEMPLATES: dict[str, str] = {
    "plain": "{problem}",
    # GRESO's examples/data_preprocess/dapo_math.py (also used for its MATH training rows).
    "greso": ("Please solve the following math problem: {problem}. The assistant first thinks about "
              "the reasoning process step by step and then provides the user with the answer. "
              "Return the final answer in \\boxed{} tags, for example \\boxed{1}. Let's solve this "
              "step by step. "),
}
OVERFLOW_MODES = ("drop", "left", "error")


def system_prompt_text(name: str) -> str | None:
  if name not in SYSTEM_PROMPTS:
    raise ConfigError(f"unknown system prompt {name!r} (config.data.system_prompt); "
                     f"known: {sorted(SYSTEM_PROMPTS)}")
  return SYSTEM_PROMPTS[name]


def build_prompt(tokenizer: Any, problem: str, system_prompt: str = "none",
                 chat_template: bool = True, user_template: str = "plain") -> list[int]:
  """Token ids of one prompt, ending where the model's answer starts."""
  system = system_prompt_text(system_prompt)
  if user_template not in USER_TEMPLATES:
    raise ConfigError(f"unknown user template {user_template!r} (config.data.user_template); "
                     f"known: {sorted(USER_TEMPLATES)}")
  problem = USER_TEMPLATES[user_template].replace("{problem}", problem)
  if chat_template:
    if not getattr(tokenizer, "chat_template", None):
      raise ConfigError("config.data.chat_template=True but the tokenizer has no chat template")
    messages = ([{"role": "system", "content": system}] if system else [])
    messages.append({"role": "user", "content": problem})
    return list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                              return_dict=False))
  text = f"{system}\n\n{problem}" if system else problem
  return list(tokenizer.encode(text, add_special_tokens=False))


@dataclasses.dataclass
class PromptBatch:
  tokens: list[list[int]]  # one per kept question
  kept: list[int]  # positions (into the input sequence) of the questions that have a prompt
  counts: collections.Counter  # "total", "kept", "dropped", "truncated"


def build_prompts(tokenizer: Any, problems: Sequence[str], data_cfg: Any) -> PromptBatch:
  """Prompts for `problems` under `config.data`: system_prompt, chat_template, max_prompt_tokens and
  prompt_overflow ("drop" over-long questions, "left"-truncate them keeping the end, or "error")."""
  mode, limit = data_cfg.prompt_overflow, data_cfg.max_prompt_tokens
  if mode not in OVERFLOW_MODES:
    raise ConfigError(f"config.data.prompt_overflow must be one of {OVERFLOW_MODES}, got {mode!r}")
  if limit < 1:
    raise ConfigError(f"config.data.max_prompt_tokens must be >= 1, got {limit}")
  batch = PromptBatch([], [], collections.Counter(total=len(problems)))
  for i, problem in enumerate(problems):
    ids = build_prompt(tokenizer, problem, data_cfg.system_prompt, data_cfg.chat_template,
                       data_cfg.user_template)
    if len(ids) > limit:
      if mode == "error":
        raise ConfigError(f"question {i}: prompt has {len(ids)} tokens > config.data.max_prompt_tokens="
                         f"{limit} (problem starts {problem[:60]!r})")
      if mode == "drop":
        batch.counts["dropped"] += 1
        continue
      ids = ids[-limit:]  # keep the end: the question and the generation prompt
      batch.counts["truncated"] += 1
    batch.tokens.append(ids)
    batch.kept.append(i)
  batch.counts["kept"] = len(batch.kept)
  return batch


def pad_prompts(token_lists: Sequence[Sequence[int]], buckets: Sequence[int],
                pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads prompts to the smallest bucket that holds the longest one -> (tokens_BxP, mask_BxP)."""
  if not token_lists:
    raise ValueError("pad_prompts: empty list of prompts")
  if not buckets:
    raise ValueError("pad_prompts: no prompt length buckets given")
  lengths = [len(t) for t in token_lists]
  for row, n in enumerate(lengths):
    if n == 0:
      raise ValueError(f"pad_prompts: prompt at row {row} is empty")
  longest = max(lengths)
  fitting = [b for b in sorted(buckets) if b >= longest]
  if not fitting:
    row = lengths.index(longest)
    raise ValueError(f"pad_prompts: prompt at row {row} has {longest} tokens, more than the largest "
                     f"bucket {max(buckets)} (config.data.prompt_buckets)")
  p = fitting[0]
  tokens_BxP = np.full((len(token_lists), p), pad_id, np.int32)
  mask_BxP = np.zeros((len(token_lists), p), np.int32)
  for row, toks in enumerate(token_lists):
    tokens_BxP[row, p - len(toks):] = np.asarray(toks, np.int32)
    mask_BxP[row, p - len(toks):] = 1
  return tokens_BxP, mask_BxP


class PromptTable:
  """Prompt token ids of a question set, built once (prompts are reused every epoch).

  Questions whose prompt overflows config.data.max_prompt_tokens are dropped or truncated per
  config.data.prompt_overflow; `question(i)` maps the i-th kept prompt (what selection strategies and
  the replay buffer index) back to its Question.
  """

  def __init__(self, tokenizer: Any, data: Any, questions: Any):
    self.questions = questions
    self.buckets = tuple(sorted(data.prompt_buckets))
    self.pad_id = int(tokenizer.pad_token_id)
    if self.buckets[-1] < data.max_prompt_tokens:
      raise ConfigError(f"config.data.prompt_buckets={self.buckets} must reach "
                        f"config.data.max_prompt_tokens={data.max_prompt_tokens}")
    every = [questions[i] for i in range(len(questions))]
    problems = [q.problem for q in every]
    built = build_prompts(tokenizer, problems, data)
    if not built.kept:
      raise ConfigError(f"{questions.name}: every prompt exceeds config.data.max_prompt_tokens="
                        f"{data.max_prompt_tokens}")
    self.tokens, self.kept, self.counts = built.tokens, np.asarray(built.kept), built.counts
    digest = hashlib.sha256()
    for i in self.kept:
      q = every[int(i)]
      digest.update(f"{q.id}\0{q.problem}\0{q.answer}\0".encode())
    # What a resume compares: the same questions in the same order (indices refer to them).
    self.fingerprint = {"rows": int(len(self.kept)), "sha256": digest.hexdigest()}

  def __len__(self) -> int:
    return len(self.kept)

  def question(self, i: int) -> Any:
    return self.questions[int(self.kept[int(i)])]

  def problems(self) -> list[str]:
    return [self.question(i).problem for i in range(len(self))]

  def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return pad_prompts([self.tokens[int(i)] for i in indices], self.buckets, self.pad_id)
