"""`load_dataset(config.data, split) -> QuestionSet`: prepared (TFDS array_record) question sets.

split "train" loads `config.data.train`; any other split is a dataset name (an entry of
`config.data.eval_sets`, e.g. "math500" or "synthetic_heldout"). Synthetic sets are generated from
`config.data.synthetic` (seed included in the fingerprint); file sets are read from
`dots_jax.data.sources`.
"""

import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from dots_jax.data import builder, sources, synthetic
from dots_jax.data.question import Question, read_questions

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
  key = builder.fingerprint(builder.FORMAT_VERSION, split, data_cfg.synthetic.to_json(sort_keys=True))

  def make():
    return synthetic.synthetic_questions(data_cfg.synthetic, split), {"source": f"synthetic:{split}"}

  return QuestionSet(name, *builder.prepare(name, prepared_root(data_cfg), key, make))


def _from_file(data_cfg: Any, name: str) -> QuestionSet:
  path = sources.find_source_file(data_cfg, name)
  skip = bool(data_cfg.skip_bad_rows)
  key = builder.fingerprint(builder.FORMAT_VERSION, builder.file_sha256(path), f"skip={skip}")

  def make():
    questions, report = read_questions(path, sources.SOURCES[name].mapper, id_prefix=name,
                                       skip_bad_rows=skip)
    if report.num_skipped:
      logging.warning("%s: skipped %d of %d rows %s; first: %s", path, report.num_skipped,
                      report.rows_read, dict(report.skipped), report.first_skips)
    return questions, builder.report_metadata(report)

  return QuestionSet(name, *builder.prepare(name, prepared_root(data_cfg), key, make))


def load_dataset(data_cfg: Any, split: str) -> QuestionSet:
  """The prepared question set for `split` ("train" = config.data.train, else a dataset name)."""
  name = data_cfg.train if split == "train" else split
  if name in SYNTHETIC_SPLITS:
    return _synthetic(data_cfg, name)
  return _from_file(data_cfg, name)
