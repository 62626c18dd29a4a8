"""TFDS builder turning validated Question lists into array_record files with random access by index.

Runs without TensorFlow (tensorflow-datasets' array_record path and `as_data_source` need only numpy).
Rows are written in order (`disable_shuffling`), so record i is Question.index i. Each prepared copy lives
in `<prepared_dir>/<name>-<fingerprint>/` where the fingerprint hashes the source bytes and the reading
options: a changed source file prepares a new copy next to the old one, never over it. TFDS writes into an
`incomplete.*` directory and renames it when done, and every row is validated before writing starts, so
a failure leaves no half-written dataset behind.
"""

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

tfds.disable_progress_bar()  # one line per prepared set is enough in training logs

from dots_jax.data.question import Question, ReadReport

FORMAT_VERSION = "1.0.0"  # bump when the record layout changes


class DotsQuestions(tfds.core.GeneratorBasedBuilder):
  """One question set (named by `dataset_name`); the records are Question fields, meta as JSON."""

  VERSION = tfds.core.Version(FORMAT_VERSION)

  @tfds_utils.classproperty
  @classmethod
  def url_infos(cls) -> None:
    # Nothing is downloaded. TFDS's default looks for a checksums file next to the builder's source,
    # which needs the `importlib_resources` backport for builders defined inside a package.
    return None

  def __init__(self, *, dataset_name: str, **kwargs):
    self._dataset_name = dataset_name
    self.questions: tuple[list[Question], dict] | None = None  # set by `prepare` before writing
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f"dots_jax question set {self._dataset_name}",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "index": np.int64,
            "problem": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "meta": tfds.features.Text(),  # JSON object
        }),
        disable_shuffling=True,  # record i must be question i
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # sources are local files, already read and validated by `prepare`
    if self.questions is None:
      raise RuntimeError("DotsQuestions is prepared through dots_jax.data.builder.prepare")
    questions, read_info = self.questions
    self.info.metadata.update(read_info)  # saved with the dataset (skip counts survive reloads)
    return {"train": self._generate_examples(questions)}

  def _generate_examples(self, questions: list[Question]):
    for q in questions:
      yield q.index, {"id": q.id, "index": q.index, "problem": q.problem, "answer": q.answer,
                      "meta": json.dumps(q.meta, ensure_ascii=False, sort_keys=True, default=str)}


def fingerprint(*parts: bytes | str) -> str:
  h = hashlib.sha256()
  for part in parts:
    h.update(part.encode() if isinstance(part, str) else part)
    h.update(b"\0")
  return h.hexdigest()[:16]


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def report_metadata(report: ReadReport) -> dict:
  return {"source": report.path, "rows_read": report.rows_read, "skipped": dict(report.skipped),
          "first_skips": report.first_skips, "duplicates": report.duplicates,
          "first_duplicate": report.first_duplicate}


def prepare(name: str, prepared_root: str, key: str,
            make_questions: Callable[[], tuple[list[Question], dict]]):
  """Prepares (once) and opens dataset `name` -> (random-access data source, metadata dict).

  `key` identifies the content (source hash + options); `make_questions` is only called when no copy
  with that key exists yet.
  """
  data_dir = os.path.join(prepared_root, f"{name}-{key}")
  open_builder = lambda: DotsQuestions(dataset_name=name, data_dir=data_dir,
                                       file_format="array_record")
  builder = open_builder()
  # TFDS writes dataset_info.json last, inside the atomically renamed directory.
  done = lambda: os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json"))
  if not done():
    # Read and validate everything before TFDS creates any directory: a bad row leaves no trace.
    builder.questions = make_questions()
    try:
      # TFDS prints "Downloading and preparing dataset Unknown size ..." for a set nothing is
      # downloaded for; one line of ours says what happened instead.
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
      print(f"prepared question set {name}: {len(builder.questions[0])} questions in {data_dir} "
            "(once: later runs read it)", flush=True)
    except FileExistsError:
      # Another job (a parallel comparison run) prepared the same content, identical by key, and
      # renamed its copy into place first.
      if not done():
        raise
    builder = open_builder()  # what is on disk now, whoever wrote it
  return builder.as_data_source(split="train"), dict(builder.info.metadata)
