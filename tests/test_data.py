"""Question readers, TFDS array_record builders and load_dataset."""

import json
import logging
import os

import pytest

from dots_jax.run.settings import data_settings
from dots_jax.config_base import base_config
from dots_jax.data.dataset import load_dataset
from dots_jax.data.question import Question, field_mapper, read_questions
from dots_jax.data.sources import SOURCES, shared_data_dir


def _cfg(tmp_path, **overrides):
  c = base_config().data
  c.manual_dir = str(tmp_path / "manual")
  c.prepared_dir = str(tmp_path / "prepared")
  c.shared_dir = str(tmp_path / "no_shared")  # tests of user files must not fall back to real data
  c.update(overrides)
  os.makedirs(c.manual_dir, exist_ok=True)
  return c


def _write(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return path


GOOD = [json.dumps({"id": f"q{i}", "problem": f"What is {i}+1?", "answer": str(i + 1), "level": i % 3})
        for i in range(20)]


@pytest.mark.parametrize("bad_line,reason,message", [
    ("{not json", "bad_json", "not valid JSON"),
    ('["a list"]', "not_object", "expected a JSON object"),
    ('{"id": "x", "problem": "p"}', "missing_field", "missing field 'answer'"),
    ('{"id": "x", "answer": "1"}', "missing_field", "missing field 'problem'"),
    ('{"id": "x", "problem": "p", "answer": 3}', "wrong_type", "field 'answer' must be a string"),
    ('{"id": "x", "problem": "  ", "answer": "3"}', "empty_field", "field 'problem' is empty"),
    ('{"id": "q0", "problem": "p", "answer": "3"}', "duplicate_id", "id 'q0' already used on line 1"),
])
def test_bad_row_is_error_naming_file_and_line_or_counted_skip(tmp_path, bad_line, reason, message):
  path = _write(tmp_path / "f.jsonl", GOOD[:3] + [bad_line] + GOOD[3:5])
  with pytest.raises(ValueError, match=f"{path}:4: {message}"):
    read_questions(path, field_mapper(), id_prefix="f", skip_bad_rows=False)
  questions, report = read_questions(path, field_mapper(), id_prefix="f", skip_bad_rows=True)
  assert [q.id for q in questions] == ["q0", "q1", "q2", "q3", "q4"]
  assert [q.index for q in questions] == list(range(5))
  assert report.skipped == {reason: 1} and report.rows_read == 6
  assert report.first_skips[0].startswith(f"{path}:4: ")


def test_empty_and_all_bad_files(tmp_path):
  empty = _write(tmp_path / "empty.jsonl", ["", "  "])
  with pytest.raises(ValueError, match=f"{empty}: empty file"):
    read_questions(empty, field_mapper(), id_prefix="e", skip_bad_rows=True)
  bad = _write(tmp_path / "bad.jsonl", ["{", "[]"])
  with pytest.raises(ValueError, match="no usable rows; all 2 skipped"):
    read_questions(bad, field_mapper(), id_prefix="b", skip_bad_rows=True)


def test_rows_without_id_and_meta(tmp_path):
  path = _write(tmp_path / "f.jsonl", [json.dumps({"problem": "p", "answer": "1", "level": 2})])
  (q,), _ = read_questions(path, field_mapper(), id_prefix="f", skip_bad_rows=False)
  assert q == Question("f-1", 0, "p", "1", {"level": 2})


def test_load_dataset_random_access(tmp_path):
  c = _cfg(tmp_path, train="math_train")
  _write(tmp_path / "manual" / "math_train.jsonl", GOOD)
  qs = load_dataset(data_settings(c), "train")
  assert len(qs) == 20 and qs.name == "math_train"
  assert qs[7] == Question("q7", 7, "What is 7+1?", "8", {"level": 1})
  assert [q.index for q in qs.get_batch([19, 3, 3, 0])] == [19, 3, 3, 0]
  assert qs.metadata["rows_read"] == 20 and qs.num_skipped == 0
  with pytest.raises(IndexError, match="math_train: index 20 out of range"):
    qs[20]
  with pytest.raises(IndexError):
    qs.get_batch([0, -1])


def test_builds_are_deterministic(tmp_path):
  os.makedirs(tmp_path / "manual")
  src = _write(tmp_path / "manual" / "math_train.jsonl", GOOD)
  a = load_dataset(_cfg(tmp_path, train="math_train", prepared_dir=str(tmp_path / "p1")), "train")
  b = load_dataset(_cfg(tmp_path, train="math_train", prepared_dir=str(tmp_path / "p2")), "train")
  assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
  # Same order as the file.
  rows = [json.loads(line) for line in src.read_text().splitlines()]
  assert [a[i].id for i in range(len(a))] == [r["id"] for r in rows]
  # Loading again reuses the prepared copy.
  before = sorted(os.listdir(tmp_path / "p1"))
  load_dataset(_cfg(tmp_path, train="math_train", prepared_dir=str(tmp_path / "p1")), "train")
  assert sorted(os.listdir(tmp_path / "p1")) == before


def test_bad_source_leaves_prepared_data_intact(tmp_path):
  c = _cfg(tmp_path, train="math_train")
  src = _write(tmp_path / "manual" / "math_train.jsonl", GOOD)
  good = load_dataset(data_settings(c), "train")
  prepared_before = sorted(os.listdir(c.prepared_dir))
  _write(src, GOOD[:5] + ['{"problem": "p"}'] + GOOD[5:])
  with pytest.raises(ValueError, match=f"{src}:6: missing field 'answer'"):
    load_dataset(data_settings(c), "train")
  assert sorted(os.listdir(c.prepared_dir)) == prepared_before  # nothing half-written beside it
  assert good[19].answer == "20"  # the earlier copy is untouched and still readable
  c.skip_bad_rows = True
  skipped = load_dataset(data_settings(c), "train")
  assert len(skipped) == 20 and skipped.metadata["skipped"] == {"missing_field": 1}
  assert load_dataset(data_settings(c), "train").num_skipped == 1  # the count survives a reload


def test_json_array_orz_and_parquet_sources(tmp_path):
  c = _cfg(tmp_path)
  (tmp_path / "manual" / "deepscaler.json").write_text(json.dumps(
      [{"problem": "p1", "answer": "1", "solution": "s"}, {"problem": "p2", "answer": "2"}]))
  ds = load_dataset(data_settings(c), "deepscaler")
  assert [ds[i].id for i in range(2)] == ["deepscaler-1", "deepscaler-2"]
  assert ds[0].meta == {"solution": "s"}
  (tmp_path / "manual" / "orz_math_57k_collected.json").write_text(json.dumps(
      [[{"from": "human", "value": "1+1?"}, {"from": "assistant", "ground_truth": {"value": "2"}}],
       [{"from": "human", "value": "2+2?"}]]))
  with pytest.raises(ValueError, match=r"orz_math_57k_collected.json:2: expected \["):
    load_dataset(data_settings(c), "orz57k")
  c.skip_bad_rows = True
  orz = load_dataset(data_settings(c), "orz57k")
  assert len(orz) == 1 and (orz[0].problem, orz[0].answer) == ("1+1?", "2")
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"question": ["q1", "q2"], "final_answer": ["a", "b"], "difficulty": [5.0, 6.5]}),
                 tmp_path / "manual" / "deepmath_103k.parquet")
  dm = load_dataset(data_settings(c), "deepmath103k")
  assert (dm[1].problem, dm[1].answer, dm[1].meta) == ("q2", "b", {"difficulty": 6.5})


def test_missing_file_says_where_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="DeepMath-103K"):
    load_dataset(data_settings(_cfg(tmp_path)), "deepmath103k")
  with pytest.raises(ValueError, match="unknown dataset 'nope'"):
    load_dataset(data_settings(_cfg(tmp_path)), "nope")


EXPECTED_ROWS = {"math500": 500, "gsm8k_test": 1319, "minerva_math": 272, "olympiadbench": 675,
                 "aime24": 30, "amc23": 40, "math_train": 7498, "deepscaler_10240": 10240}


@pytest.fixture(scope="module")
def shared_cfg(tmp_path_factory):
  c = base_config().data
  c.prepared_dir = str(tmp_path_factory.mktemp("prepared"))
  if not os.path.isfile(os.path.join(shared_data_dir(c), "math500.jsonl")):
    pytest.skip(f"no benchmark files in {shared_data_dir(c)}: set DOTS_JAX_DATA to the shared data dir")
  return c


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_shared_benchmarks_load(shared_cfg, name):
  qs = load_dataset(data_settings(shared_cfg), name)
  assert len(qs) == EXPECTED_ROWS[name] and qs.num_skipped == 0
  with open(os.path.join(shared_data_dir(shared_cfg), SOURCES[name].files[0]), encoding="utf-8") as f:
    first = json.loads(f.readline())
  assert (qs[0].id, qs[0].problem, qs[0].answer) == (first["id"], first["problem"], first["answer"])
  assert qs[len(qs) - 1].index == len(qs) - 1


def test_synthetic_sets_are_deterministic(tmp_path):
  c = _cfg(tmp_path, train="synthetic")
  c.synthetic.update(train_size=60, heldout_size=30)
  train = load_dataset(data_settings(c), "train")
  heldout = load_dataset(data_settings(c), "synthetic_heldout")
  assert (len(train), len(heldout)) == (60, 30)
  assert {train[i].problem for i in range(60)}.isdisjoint({heldout[i].problem for i in range(30)})
  c2 = _cfg(tmp_path, train="synthetic", prepared_dir=str(tmp_path / "other"))
  c2.synthetic.update(train_size=60, heldout_size=30)
  again = load_dataset(data_settings(c2), "train")
  assert [again[i] for i in range(60)] == [train[i] for i in range(60)]
  c2.synthetic.seed += 1
  c2.prepared_dir = str(tmp_path / "third")
  assert [q.problem for q in load_dataset(data_settings(c2), "train").get_batch(range(60))] != \
      [train[i].problem for i in range(60)]


def test_concurrent_prepare_of_the_same_content_opens_the_winner(tmp_path):
  # Two jobs (parallel comparison runs) prepare the same set: the one that loses the final rename
  # opens the winner's identical copy instead of failing.
  from dots_jax.data import builder
  rows = [Question(f"q{i}", i, f"{i}+1=", str(i + 1), {}) for i in range(5)]
  root = str(tmp_path / "prepared")

  def make_slow():  # while this job reads its source, another finishes the same preparation
    builder.prepare("race", root, "k1", lambda: (rows, {"who": "winner"}))
    return rows, {"who": "loser"}

  source, meta = builder.prepare("race", root, "k1", make_slow)
  assert meta["who"] == "winner" and len(source) == 5


def test_repeated_problems_without_ids_are_counted_and_said_on_every_load(tmp_path, caplog):
  rows = [json.dumps({"problem": "What is 2+2?", "answer": "4"})] * 5 + [
      json.dumps({"problem": "What is 3+3?", "answer": "6"})]
  c = _cfg(tmp_path, train=str(tmp_path / "manual" / "dups.jsonl"))
  _write(tmp_path / "manual" / "dups.jsonl", rows)
  for _ in range(2):  # prepared once, said both times
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      qs = load_dataset(data_settings(c), "train")
    assert len(qs) == 6
    assert any("4 rows without an id repeat an earlier row's problem" in r.getMessage()
               and "dups.jsonl:2: repeats the problem of line 1" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
  c.skip_bad_rows = True
  caplog.clear()
  qs = load_dataset(data_settings(c), "train")
  assert len(qs) == 2 and qs.metadata["skipped"] == {"duplicate_problem": 4}
