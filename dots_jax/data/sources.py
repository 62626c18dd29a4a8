"""Where each named dataset comes from: expected file names, field mapping, and where to obtain it.

Files are looked up in `config.data.manual_dir` (user-provided training files) and then the shared
benchmark directory (`config.data.shared_dir`, else $DOTS_JAX_DATA, else `<repo>/../shared/data`).
Provenance and licences: third_party/DATASETS.md.
"""

import dataclasses
import os
from typing import Any

from dots_jax.data.question import BadRow, DataError, MissingDataError, RowMapper, field_mapper


@dataclasses.dataclass(frozen=True)
class Source:
  name: str
  files: tuple[str, ...]  # accepted file names, first found wins (.jsonl, .json array, or .parquet)
  mapper: RowMapper
  obtain: str  # where users get the file
  rows: int = 0  # rows of the published file (0: not fixed); what a simulation of it assumes


def _orz_mapper(row: Any) -> tuple[str | None, str, str, dict]:
  """Open-Reasoner-Zero rows: [{"from": "human", "value": problem},
  {"from": "assistant", "ground_truth": {"value": answer}}]."""
  try:
    problem, answer = row[0]["value"], row[1]["ground_truth"]["value"]
  except (KeyError, IndexError, TypeError):
    raise BadRow("missing_field", "expected [{'value': problem}, {'ground_truth': {'value': answer}}]"
                 ) from None
  if not isinstance(problem, str) or not isinstance(answer, str):
    raise BadRow("wrong_type", "problem and ground_truth value must be strings")
  if not problem.strip() or not answer.strip():
    raise BadRow("empty_field", "empty problem or answer")
  return None, problem, answer, {}


_SHARED = "in the shared benchmark dir (see ../shared/data/SOURCES.md)"
SOURCES: dict[str, Source] = {s.name: s for s in (
    # Evaluation sets.
    Source("math500", ("math500.jsonl",), field_mapper(), _SHARED + "; HuggingFaceH4/MATH-500"),
    Source("gsm8k_test", ("gsm8k_test.jsonl",), field_mapper(), _SHARED + "; openai/grade-school-math"),
    Source("minerva_math", ("minerva_math.jsonl",), field_mapper(),
           _SHARED + "; QwenLM/Qwen2.5-Math evaluation/data/minerva_math"),
    Source("olympiadbench", ("olympiadbench.jsonl",), field_mapper(),
           _SHARED + "; QwenLM/Qwen2.5-Math evaluation/data/olympiadbench"),
    Source("aime24", ("aime24.jsonl",), field_mapper(), _SHARED + "; QwenLM/Qwen2.5-Math evaluation/data/aime24"),
    Source("amc23", ("amc23.jsonl",), field_mapper(), _SHARED + "; QwenLM/Qwen2.5-Math evaluation/data/amc23"),
    Source("math_test", ("math_test.jsonl",), field_mapper(), _SHARED + "; hendrycks/math test split"),
    # Training sets.
    Source("math_train", ("math_train.jsonl",), field_mapper(),
           _SHARED + "; or hendrycks/math train split as JSONL {id, problem, answer}", rows=7498),
    Source("deepscaler", ("deepscaler.jsonl", "deepscaler.json", "deepscaler.parquet"), field_mapper(),
           "agentica-project/deepscaler deepscaler/data/train/deepscaler.json (JSON array of "
           "{problem, answer, solution}) or HF agentica-org/DeepScaleR-Preview-Dataset"),
    Source("deepscaler_10240", ("deepscaler_10240.jsonl",), field_mapper(),
           _SHARED + "; the DOTS reference script's 10,240-question DeepScaleR subset", rows=10240),
    Source("orz57k", ("orz_math_57k_collected.json",), _orz_mapper,
           "Open-Reasoner-Zero/Open-Reasoner-Zero data/orz_math_57k_collected.json"),
    Source("deepmath103k", ("deepmath_103k.jsonl", "deepmath_103k.parquet"),
           field_mapper("question", "final_answer", None),
           "HF zwhe99/DeepMath-103K (parquet shards; concatenate to deepmath_103k.parquet or export "
           "JSONL with fields question, final_answer)"),
    Source("gsm8k_train", ("gsm8k_train.jsonl",), field_mapper(), _SHARED + "; openai/grade-school-math"),
    Source("dapo_math_17k", ("dapo_math_17k.jsonl",), field_mapper(),
           _SHARED + "; BytedTsinghua-SIA/DAPO-Math-17k (deduplicated by GRESO)", rows=17917),
)}
# The DOTS paper's average is over these four.
DOTS_AVERAGE_SETS = ("gsm8k_test", "math500", "minerva_math", "olympiadbench")


def repo_dir() -> str:
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shared_data_dir(data_cfg: Any) -> str:
  """config.data.shared_dir, else $DOTS_JAX_DATA, else <repo>/../shared/data (may not exist)."""
  return (data_cfg.shared_dir or os.environ.get("DOTS_JAX_DATA")
          or os.path.join(repo_dir(), os.pardir, "shared", "data"))


def find_source_file(data_cfg: Any, name: str) -> str:
  """Path of dataset `name`'s file; a clear error listing where it looked and how to obtain it."""
  if name not in SOURCES:
    raise DataError(f"unknown dataset {name!r}; known: {sorted(SOURCES)} (and synthetic)")
  source = SOURCES[name]
  dirs = [d for d in (data_cfg.manual_dir, shared_data_dir(data_cfg)) if d]
  for d in dirs:
    for file_name in source.files:
      path = os.path.join(d, file_name)
      if os.path.isfile(path):
        return os.path.normpath(path)
  raise MissingDataError(
      f"dataset {name!r}: none of {list(source.files)} in {dirs} (config.data.manual_dir, "
      f"config.data.shared_dir / $DOTS_JAX_DATA). Obtain it from: {source.obtain}")
