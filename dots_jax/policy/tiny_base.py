"""The embedded default's base policy: shipped with the package, or made once from its recipe and cached.

`ensure_tiny_base(recipe)` returns a Hugging Face directory that `dots_jax.model.hf_io.load_policy`
loads exactly like a real Qwen2.5 checkpoint. The base is a fixed artefact of a fixed recipe: the
`tiny` section, the synthetic families and their SFT weights and drop rates, the prompt format
(`recipe`). The default recipe's base ships in `dots_jax/assets/tiny_base/` with the recipe's
fingerprint and the digest of every file; a config whose recipe matches loads it at once. Any other
recipe (a preset such as `configs/tiny.py:carry`, an override of a `tiny.*` or SFT-stream key) is
built once into the cache, keyed by its fingerprint, with one line saying how it differs.

  python -m dots_jax.tiny.build_base --config=configs/tiny.py     # rebuilds the shipped base

(`tests/test_tiny.py` holds the shipped fingerprint to `configs/tiny.py`'s recipe, so a change of the
default recipe without a rebuilt base fails CI instead of loading a stale base.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Callable

import jax

from dots_jax.data.prompts import build_prompt
from dots_jax.data.settings import SyntheticSettings
from dots_jax.data.synthetic import sft_stream
from dots_jax.model.hf_io import export_policy, load_tokenizer
from dots_jax.model.qwen2 import Qwen2Config, init_model
from dots_jax.policy import sft
from dots_jax.policy.tokenizer import make_char_tokenizer

INFO_FILE = "tiny_base.json"
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                           "tiny_base")
_TMP_PREFIX = ".tmp-tiny-"


@dataclasses.dataclass(frozen=True)
class TinySettings:
  """`config.tiny` (configs/tiny.py says what each does): the model's shape, the SFT warm-up and its
  demonstrations' drop rates, and where built bases are cached."""

  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  mlp_ratio: int
  max_positions: int
  rope_theta: float
  init_std: float
  sft_steps: int
  sft_schedule_steps: int
  sft_batch: int
  sft_lr: float
  sft_warmup: int
  seed: int
  sft_carry_drop: float
  sft_borrow_drop: float
  cache_dir: str


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Everything the base policy depends on: the `tiny` section, the synthetic task it is fine-tuned
  on, and the prompt format it is fed (not `tiny.cache_dir`: where it lives is no input)."""

  tiny: TinySettings
  synthetic: SyntheticSettings
  system_prompt: str
  chat_template: bool
  max_prompt_tokens: int
  max_new_tokens: int

  def as_dict(self) -> dict[str, Any]:
    tiny = {k: v for k, v in dataclasses.asdict(self.tiny).items() if k != "cache_dir"}
    if tiny.get("sft_borrow_drop", -1.0) < 0:  # unset (= sft_carry_drop): bases made before it
      tiny.pop("sft_borrow_drop", None)  # keep their key
    out = {"tiny": tiny, "synthetic": dataclasses.asdict(self.synthetic),
           "system_prompt": self.system_prompt, "chat_template": self.chat_template,
           "max_prompt_tokens": self.max_prompt_tokens, "max_new_tokens": self.max_new_tokens}
    return json.loads(json.dumps(out, sort_keys=True))  # tuples as lists, as stored

  @property
  def key(self) -> str:
    """The recipe's fingerprint (the cache directory's name, the shipped base's key)."""
    return recipe_key(self.as_dict())


def cache_root(tiny: TinySettings) -> str:
  return (tiny.cache_dir or os.environ.get("DOTS_JAX_CACHE")
          or os.path.join(os.path.expanduser("~"), ".cache", "dots_jax"))


def recipe_key(rec: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:16]


def tiny_base_dir(recipe: Recipe) -> str:
  return os.path.join(cache_root(recipe.tiny), f"tiny-{recipe.key}")


def recipe_changes(old: dict[str, Any], new: dict[str, Any], limit: int = 4) -> str:
  """'tiny.sft_steps 3000 -> 20, ...': the leaves that differ (the first `limit`, then a count)."""
  def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
      out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out

  def show(v: Any) -> str:
    return "+".join(map(str, v)) if isinstance(v, list) else "<unset>" if v is None else str(v)

  a, b = flat(old), flat(new)
  # The `tiny` section first: the base's own settings, then the data and prompt format it is fed.
  keys = sorted(set(a) | set(b), key=lambda k: (not k.startswith("tiny."), k))
  diffs = [f"{k.replace('synthetic.', 'data.synthetic.')} {show(a.get(k))} -> {show(b.get(k))}"
           for k in keys if a.get(k) != b.get(k)]
  more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
  return ", ".join(diffs[:limit]) + more


def _file_digests(directory: str) -> dict[str, str]:
  """sha256 of every file of a base directory but its info file."""
  out = {}
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if name != INFO_FILE and os.path.isfile(path):
      with open(path, "rb") as f:
        out[name] = hashlib.sha256(f.read()).hexdigest()
  return out


@dataclasses.dataclass(frozen=True)
class ShippedBase:
  """A finished base directory (the package's shipped one, or a cached build) and what its info
  file records."""

  path: str
  info: dict[str, Any]

  @property
  def key(self) -> str:
    return self.info["key"]

  def problem(self) -> str | None:
    """Why the shipped files cannot be used (missing or changed since they were recorded), or None."""
    recorded = self.info.get("files", {})
    if not recorded:
      return "records no file digests"
    found = _file_digests(self.path)
    bad = sorted(n for n, h in recorded.items() if found.get(n) != h)
    return f"has missing or changed files ({', '.join(bad)})" if bad else None


def shipped_base(directory: str = SHIPPED_DIR) -> ShippedBase | None:
  """The base in `directory` (default: the package's shipped one), or None where there is none
  (or its info file does not read)."""
  try:
    with open(os.path.join(directory, INFO_FILE)) as f:
      info = json.load(f)
  except (OSError, ValueError):
    return None
  return ShippedBase(directory, info) if isinstance(info, dict) and "key" in info else None


def tiny_model_config(tiny: TinySettings, vocab_size: int, eos_id: int, bos_id: int | None) -> Qwen2Config:
  return Qwen2Config(
      vocab_size=vocab_size, hidden_size=tiny.hidden_size,
      intermediate_size=tiny.hidden_size * tiny.mlp_ratio, num_hidden_layers=tiny.num_layers,
      num_attention_heads=tiny.num_heads, num_key_value_heads=tiny.num_kv_heads,
      tie_word_embeddings=True, max_position_embeddings=tiny.max_positions,
      rope_theta=tiny.rope_theta, initializer_range=tiny.init_std,
      bos_token_id=bos_id, eos_token_id=eos_id)


def prompt_encoder(tokenizer: Any, system_prompt: str, chat_template: bool
                   ) -> Callable[[str], list[int]]:
  """problem -> prompt token ids, built exactly as the RL job and the evaluator build prompts."""
  return lambda problem: build_prompt(tokenizer, problem, system_prompt, chat_template)


def answer_encoder(tokenizer: Any) -> Callable[[str], list[int]]:
  return lambda text: tokenizer.encode(text, add_special_tokens=False)


def ensure_tiny_base(recipe: Recipe, log: Callable[[str], None] = print) -> str:
  """Path of the base policy of `recipe`: the shipped one when the recipe is the shipped base's and
  its files verify; else the cached build, made first if needed (one line says why).

  In a multi-process run process 0 builds and the others wait for the finished directory (it
  appears atomically, by rename, only once complete).
  """
  rec = recipe.as_dict()
  shipped = shipped_base()
  if shipped is not None and shipped.key == recipe.key:
    problem = shipped.problem()
    if problem is None:
      return shipped.path
    why = f"the shipped base {shipped.path} {problem}"
  elif shipped is not None:
    why = (f"this recipe differs from the shipped base's "
           f"({recipe_changes(shipped.info.get('recipe', {}), rec)})")
  else:
    why = f"the package ships no base ({SHIPPED_DIR} has no {INFO_FILE})"
  out_dir = tiny_base_dir(recipe)
  marker = os.path.join(out_dir, INFO_FILE)
  cached = shipped_base(out_dir) if os.path.exists(marker) else None
  damaged = cached.problem() if cached is not None and cached.info.get("files") else None
  if cached is not None and damaged is None:
    log(f"== tiny base policy: {why}; using its cached build {out_dir}")
    return out_dir
  if damaged is not None and jax.process_index() == 0:
    log(f"== tiny base policy: the cached build {out_dir} {damaged}; building it again")
    os.remove(marker)
  if jax.process_index() != 0:
    while not os.path.exists(marker):
      time.sleep(2.0)
    return out_dir
  log(f"== tiny base policy: {why}; building it into {out_dir} ({recipe.tiny.sft_steps} SFT steps, "
      "once: later runs load it)")
  build_into(recipe, out_dir, log)
  return out_dir


def build_into(recipe: Recipe, out_dir: str, log: Callable[[str], None] = print,
               replace: bool = False) -> dict[str, Any]:
  """Builds the base of `recipe` into `out_dir`, which appears by rename only once complete
  (with `replace`, an existing `out_dir` is swapped out; without, a finished copy another job made
  first is kept). Temporary directories that builders killed on this host left behind are
  removed first. Returns the info file's contents."""
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  remove_stale_tmp(parent)
  tmp = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-", dir=parent)
  os.chmod(tmp, 0o755)  # a cache (or the package) others read, not a private temporary
  try:
    info = build_tiny_base(recipe, tmp, log)
    with open(os.path.join(tmp, INFO_FILE), "w") as f:
      json.dump(info, f, indent=1, sort_keys=True)
    if os.path.exists(os.path.join(out_dir, INFO_FILE)) and not replace:
      shutil.rmtree(tmp)  # another job finished first; keep its copy
      return info
    old = None
    if os.path.exists(out_dir):
      old = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}old-", dir=parent)
      os.replace(out_dir, os.path.join(old, "base"))
    os.replace(tmp, out_dir)
    if old is not None:
      shutil.rmtree(old)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return info


def remove_stale_tmp(parent: str) -> list[str]:
  """Removes the temporary build directories under `parent` whose builder on this host is no longer
  alive (a build killed before its cleanup could run); returns their names."""
  host = socket.gethostname()
  removed = []
  for name in os.listdir(parent):
    if not name.startswith(_TMP_PREFIX):
      continue
    parts = name[len(_TMP_PREFIX):].split("-")
    if parts[0] == "old":  # a swapped-out copy whose deletion was cut short
      stale = True
    else:
      # <host>-<pid>-<random>; a host name may itself hold dashes. Older builders wrote no pid.
      pid = parts[-2] if len(parts) >= 3 else ""
      builder_host = "-".join(parts[:-2])
      stale = not pid.isdigit() or (builder_host == host and not _alive(int(pid)))
    if stale:
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
      removed.append(name)
  return removed


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def build_tiny_base(recipe: Recipe, out_dir: str, log: Callable[[str], None] = print
                    ) -> dict[str, Any]:
  """Tokenizer + random tiny Qwen2 + SFT, written to `out_dir` as a Hugging Face directory; returns
  the info the directory's info file records (recipe, fingerprint, file digests, SFT summary)."""
  tiny = recipe.tiny
  tok_dir = os.path.join(out_dir, "_tokenizer")
  make_char_tokenizer(tok_dir)
  tokenizer = load_tokenizer(tok_dir)
  eos_id = tokenizer.eos_token_id
  cfg = tiny_model_config(tiny, len(tokenizer), eos_id, tokenizer.bos_token_id)
  model = init_model(cfg, tiny.seed)
  length = recipe.max_prompt_tokens + recipe.max_new_tokens
  log(f"  tiny Qwen2: {cfg.num_params() / 1e6:.2f}M params, vocab {cfg.vocab_size}, "
      f"SFT {tiny.sft_steps} steps x {tiny.sft_batch}")
  info = sft.run_sft(model, sft_stream(recipe.synthetic, tiny.seed, tiny.sft_carry_drop,
                                         tiny.sft_borrow_drop),
                     tiny, prompt_encoder(tokenizer, recipe.system_prompt, recipe.chat_template),
                     answer_encoder(tokenizer), eos_id,
                     length, log)
  export_policy(cfg, model, out_dir, tokenizer_dir=tok_dir)
  shutil.rmtree(tok_dir)
  info.update(key=recipe.key, recipe=recipe.as_dict(), num_params=cfg.num_params(),
              files=_file_digests(out_dir))
  return info
