"""`load_dataset(config.data, split) -> QuestionSet`: prepared (TFDS array_record) question sets.

split "train" loads `config.data.train`; any other split is a dataset name (an entry of
`config.data.eval_sets`, e.g. "math500" or "synthetic_heldout"). "a+b" is the concatenation of
file sets a and b (GRESO trains on "dapo_math_17k+math_train"), each question's meta naming its
`source`. A part that is a file path (ending in .jsonl, .json or .parquet) is read with the field
names of `config.data.problem_field` / `answer_field` / `id_field`. Synthetic sets are generated from
`config.data.synthetic` (seed included in the fingerprint); file sets are read from
`dots_jax.data.sources`.
"""

import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from dots_jax import fs
from dots_jax.config_common import as_json
from dots_jax.data import builder, sources, synthetic
from dots_jax.data.question import MissingDataError, Question, field_mapper, read_questions

SYNTHETIC_SPLITS = {"synthetic": "train", "synthetic_heldout": "heldout"}


class QuestionSet:
  """Random access to one prepared question set: `len(qs)`, `qs[i]`, `qs.get_batch(indices)`."""

  def __init__(self, name: str, data_source: Any, metadata: dict):
    self.name = name
    self._source = data_source
    self.metadata = metadata  # source path, rows read, skip counts by reason

  def __len__(self) -> int:
    return len(self._source)

  @staticmethod
  def _decode(record: dict) -> Question:
    text = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in record.items()}
    return Question(text["id"], int(text["index"]), text["problem"], text["answer"],
                    json.loads(text["meta"]))

  def __getitem__(self, index: int) -> Question:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
    return self._decode(self._source[index])

  def get_batch(self, indices: Sequence[int]) -> list[Question]:
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < len(self)]
    if bad:
      raise IndexError(f"{self.name}: indices {bad[:5]} out of range [0, {len(self)})")
    return [self._decode(r) for r in self._source.__getitems__(indices)]

  @property
  def num_skipped(self) -> int:
    return sum(self.metadata.get("skipped", {}).values())


def prepared_root(data_cfg: Any) -> str:
  """config.data.prepared_dir, else $DOTS_JAX_PREPARED, else ~/.cache/dots_jax/prepared."""
  return os.path.expanduser(data_cfg.prepared_dir or os.environ.get("DOTS_JAX_PREPARED")
                            or "~/.cache/dots_jax/prepared")


def _synthetic(data_cfg: Any, name: str) -> QuestionSet:
  split = SYNTHETIC_SPLITS[name]
  key = builder.fingerprint(builder.FORMAT_VERSION, split, as_json(data_cfg.synthetic))

  def make():
    return synthetic.synthetic_questions(data_cfg.synthetic, split), {"source": f"synthetic:{split}"}

  return QuestionSet(name, *builder.prepare(name, prepared_root(data_cfg), key, make))


FILE_SUFFIXES = (".jsonl", ".json", ".parquet")


def _is_path(part: str) -> bool:
  return part.endswith(FILE_SUFFIXES)


def _part_file(data_cfg: Any, part: str) -> tuple[str, Any]:
  """(file path, row mapper) of one part of a data set name: a registry name or a user file."""
  if not _is_path(part):
    return sources.find_source_file(data_cfg, part), sources.SOURCES[part].mapper
  # A gs:// file is copied once into the local cache (the builder reads local files).
  path = fs.localize(part) if fs.is_remote(part) else os.path.expanduser(part)
  if not os.path.isfile(path):
    raise MissingDataError(f"config.data.train: {part!r} is not a file (a path must end in "
                            f"{', '.join(FILE_SUFFIXES)}; registry names: {sorted(sources.SOURCES)})")
  return path, field_mapper(data_cfg.problem_field, data_cfg.answer_field,
                               data_cfg.id_field or None)


def _from_files(data_cfg: Any, name: str) -> QuestionSet:
  parts = name.split("+")
  files = [_part_file(data_cfg, part) for part in parts]
  paths = [path for path, _ in files]
  skip = bool(data_cfg.skip_bad_rows)
  fields = ([data_cfg.problem_field, data_cfg.answer_field, data_cfg.id_field]
            if any(map(_is_path, parts)) else [])
  key = builder.fingerprint(builder.FORMAT_VERSION, *map(builder.file_sha256, paths), f"skip={skip}",
                            *fields)

  def make():
    questions, metas = [], []
    for part, (path, mapper) in zip(parts, files):
      prefix = _safe_name(os.path.splitext(os.path.basename(part))[0]) if _is_path(part) else part
      qs, report = read_questions(path, mapper, id_prefix=prefix, skip_bad_rows=skip)
      if report.num_skipped:
        logging.warning("%s: skipped %d of %d rows %s; first: %s", path, report.num_skipped,
                        report.rows_read, dict(report.skipped), report.first_skips)
      offset = len(questions)
      questions += [q if len(parts) == 1 else
                    dataclasses.replace(q, index=offset + q.index, meta={**q.meta, "source": part})
                    for q in qs]
      metas.append(builder.report_metadata(report))
    if len(parts) == 1:
      return questions, metas[0]
    skipped: dict[str, int] = {}
    for m in metas:
      for reason, count in m["skipped"].items():
        skipped[reason] = skipped.get(reason, 0) + count
    return questions, {"source": paths, "rows_read": sum(m["rows_read"] for m in metas),
                       "skipped": skipped, "first_skips": [s for m in metas for s in m["first_skips"]],
                       "parts": {part: m["rows_read"] for part, m in zip(parts, metas)},
                       "duplicates": sum(m["duplicates"] for m in metas),
                       "first_duplicate": next((m["first_duplicate"] for m in metas
                                                if m["first_duplicate"]), "")}

  prepared_name = "_and_".join(_safe_name(os.path.basename(p)) for p in parts)
  qs = QuestionSet(name, *builder.prepare(prepared_name, prepared_root(data_cfg), key, make))
  dups = int(qs.metadata.get("duplicates", 0))
  if dups and not skip:  # said on every load, not only when the set is first prepared
    logging.warning("%s: %d rows without an id repeat an earlier row's problem (first: %s); they "
                    "train as separate questions: set config.data.skip_bad_rows=True to drop them",
                    name, dups, qs.metadata.get("first_duplicate", ""))
  return qs


def _safe_name(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9_]", "_", text)


def load_dataset(data_cfg: Any, split: str) -> QuestionSet:
  """The prepared question set for `split` ("train" = config.data.train, else a dataset name)."""
  name = data_cfg.train if split == "train" else split
  if name in SYNTHETIC_SPLITS:
    return _synthetic(data_cfg, name)
  return _from_files(data_cfg, name)
