"""The `Question` record and validated readers for JSONL / JSON-array / parquet question files.

Readers check every row before anything is written: bad JSON, a non-object row, a missing or non-string
(or empty) problem/answer, and an empty file are errors naming file and line, or, with
`skip_bad_rows=True`, skipped rows counted by reason (a file with no good row is always an error).
"""

import collections
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from dots_jax.config_common import UserError


@dataclasses.dataclass(frozen=True)
class Question:
  id: str  # unique within its dataset
  index: int  # position in the dataset; what selection strategies pick
  problem: str
  answer: str  # gold final answer, unnormalised
  meta: dict = dataclasses.field(default_factory=dict)  # source fields besides problem/answer


class DataError(UserError, ValueError):
  """A data file that cannot be read as questions; the message names the file (and line)."""


class MissingDataError(DataError, FileNotFoundError):
  """A data set whose file is not where the config says; the message says where to get it."""


class BadRow(ValueError):
  """A row that cannot become a Question; `reason` names the check that failed."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


@dataclasses.dataclass
class ReadReport:
  path: str
  rows_read: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  first_skips: list = dataclasses.field(default_factory=list)  # "file:line: why" for the first few
  # Rows without an id whose problem repeats an earlier row's (kept: trained as separate
  # questions, unless skip_bad_rows drops them as "duplicate_problem"), and the first such line.
  duplicates: int = 0
  first_duplicate: str = ""

  @property
  def num_skipped(self) -> int:
    return sum(self.skipped.values())


# Maps one parsed JSON value to (id or None, problem, answer, meta); raises BadRow.
RowMapper = Callable[[Any], tuple[str | None, str, str, dict]]


def field_mapper(problem_key: str = "problem", answer_key: str = "answer",
                 id_key: str | None = "id") -> RowMapper:
  """A RowMapper for flat objects; every other field goes to `meta`."""

  def mapper(row: Any) -> tuple[str | None, str, str, dict]:
    if not isinstance(row, dict):
      raise BadRow("not_object", f"expected a JSON object, got {type(row).__name__}")
    values = {}
    for key in (problem_key, answer_key):
      if key not in row:
        raise BadRow("missing_field", f"missing field {key!r}")
      if not isinstance(row[key], str):
        raise BadRow("wrong_type", f"field {key!r} must be a string, got {type(row[key]).__name__}")
      if not row[key].strip():
        raise BadRow("empty_field", f"field {key!r} is empty")
      values[key] = row[key]
    row_id = row.get(id_key) if id_key else None
    if row_id is not None and not isinstance(row_id, (str, int)):
      raise BadRow("wrong_type", f"field {id_key!r} must be a string or integer")
    meta = {k: v for k, v in row.items() if k not in (problem_key, answer_key, id_key)}
    return (None if row_id is None else str(row_id)), values[problem_key], values[answer_key], meta

  return mapper


def jsonl_rows(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, parsed value or a BadRow) for each non-blank line of a JSONL file; a line that
  is not UTF-8 is a BadRow too (the rest of the file is still read)."""
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        yield line_no, BadRow("bad_encoding", f"not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                              f"{e.start + 1})")
        continue
      if not line.strip():
        continue
      try:
        yield line_no, json.loads(line)
      except json.JSONDecodeError as e:
        yield line_no, BadRow("bad_json", f"not valid JSON ({e.msg} at column {e.colno})")


def _json_array_values(path: str) -> Iterator[tuple[int, Any]]:
  """Items of a top-level JSON array, numbered from 1 ("line" = item number in errors)."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw[:e.start].count(b"\n") + 1
    raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x})") from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
  if not isinstance(data, list):
    raise DataError(f"{path}: expected a top-level JSON array, got {type(data).__name__}")
  yield from enumerate(data, start=1)


def _parquet_values(path: str) -> Iterator[tuple[int, Any]]:
  """Rows of a parquet file (as Hugging Face publishes them), numbered from 1."""
  import pyarrow.parquet as pq  # only needed for parquet sources
  try:
    rows = pq.read_table(path).to_pylist()
  except Exception as e:  # pyarrow raises several unrelated types for unreadable files
    raise DataError(f"{path}: not a readable parquet file ({e})") from None
  yield from enumerate(rows, start=1)


def read_questions(path: str | os.PathLike, mapper: RowMapper, *, id_prefix: str,
                   skip_bad_rows: bool) -> tuple[list[Question], ReadReport]:
  """All good rows of a `.jsonl` (one object per line) or `.json` (array) file as Questions.

  Rows keep file order; `index` counts kept rows. Rows without an id get `<id_prefix>-<line>`.
  Duplicate ids are an error (ids must identify questions across runs). A row without an id whose
  problem repeats an earlier row's is counted (`ReadReport.duplicates`: the loader warns) and kept,
  or with `skip_bad_rows` skipped as "duplicate_problem".
  """
  path = os.fspath(path)
  report = ReadReport(path)
  if path.endswith(".parquet"):
    values = _parquet_values(path)
  elif path.endswith(".json"):
    values = _json_array_values(path)
  else:
    values = jsonl_rows(path)
  questions: list[Question] = []
  seen_ids: dict[str, int] = {}
  seen_problems: dict[str, int] = {}  # problem -> line, of rows without an id
  for line_no, value in values:
    report.rows_read += 1
    try:
      if isinstance(value, BadRow):
        raise value
      row_id, problem, answer, meta = mapper(value)
      if row_id is None:
        if problem in seen_problems:
          repeat = f"{path}:{line_no}: repeats the problem of line {seen_problems[problem]}"
          report.first_duplicate = report.first_duplicate or repeat
          report.duplicates += 1
          if skip_bad_rows:
            raise BadRow("duplicate_problem", f"repeats the problem of line "
                                              f"{seen_problems[problem]} (no id)")
        else:
          seen_problems[problem] = line_no
      row_id = f"{id_prefix}-{line_no}" if row_id is None else row_id
      if row_id in seen_ids:
        raise BadRow("duplicate_id", f"id {row_id!r} already used on line {seen_ids[row_id]}")
    except BadRow as e:
      if not skip_bad_rows:
        raise DataError(f"{path}:{line_no}: {e} (set config.data.skip_bad_rows=True to skip bad "
                        "rows)") from None
      report.skipped[e.reason] += 1
      if len(report.first_skips) < 5:
        report.first_skips.append(f"{path}:{line_no}: {e}")
      continue
    seen_ids[row_id] = line_no
    questions.append(Question(row_id, len(questions), problem, answer, meta))
  if report.rows_read == 0:
    raise DataError(f"{path}: empty file (no rows)")
  if not questions:
    raise DataError(f"{path}: no usable rows; all {report.rows_read} skipped: "
                    f"{dict(report.skipped)}; first: {report.first_skips[0]}")
  return questions, report
