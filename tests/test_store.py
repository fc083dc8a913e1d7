"""The SQLite trace store: round trip, resumability, and clear errors on damage."""

import sqlite3

import pytest
from stepgraph.training.records import Episode, StepRecord
from stepgraph.training.store import TraceStore

from stepgraph.errors import TraceStoreError


def _episode(i: int) -> Episode:
    step = StepRecord(0, {"logit_confidence": 9.0}, 1, 0.4, "1+1=3", "1+1=2", False, True, 10.0, 80.0, 90.0)
    return Episode(f"p{i}", "q", "2", [step], reward=1, target_reward=1, target_flops=160.0, behaviour="b", seed=i)


def test_round_trip_and_ids(tmp_path):
    with TraceStore(tmp_path / "t.sqlite") as store:
        for i in range(3):
            store.add(_episode(i), "train")
        store.add(_episode(9), "calibration")
        store.set_meta("models", [{"name": "draft"}])
    with TraceStore(tmp_path / "t.sqlite", create=False) as store:
        assert len(store) == 4 and store.problem_ids() == {"p0", "p1", "p2", "p9"}
        episodes = list(store.episodes("train"))
        assert [e.problem_id for e in episodes] == ["p0", "p1", "p2"]
        assert episodes[0] == _episode(0)
        assert store.meta("models") == [{"name": "draft"}]


def test_episode_is_durable_before_the_store_is_closed(tmp_path):
    store = TraceStore(tmp_path / "t.sqlite")
    store.add(_episode(0), "train")
    # A second connection (another process, or after a kill) sees the finished episode at once.
    with TraceStore(tmp_path / "t.sqlite", create=False) as reader:
        assert reader.problem_ids() == {"p0"}
    store.close()


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(TraceStoreError, match="collect"):
        TraceStore(tmp_path / "none.sqlite", create=False)


def test_garbage_file_is_a_clear_error(tmp_path):
    path = tmp_path / "t.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(TraceStoreError, match="corrupted or truncated|not a readable"):
        TraceStore(path)


def test_truncated_store_is_a_clear_error(tmp_path):
    path = tmp_path / "t.sqlite"
    with TraceStore(path) as store:
        for i in range(200):
            store.add(_episode(i), "train")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceStoreError), TraceStore(path) as store:
        list(store.episodes())


def test_corrupted_row_names_the_episode(tmp_path):
    path = tmp_path / "t.sqlite"
    with TraceStore(path) as store:
        store.add(_episode(0), "train")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE episodes SET data = '{\"steps\": ' WHERE problem_id = 'p0'")
    with TraceStore(path) as store, pytest.raises(TraceStoreError, match="p0"):
        list(store.episodes())


def test_other_schema_version_is_refused(tmp_path):
    path = tmp_path / "t.sqlite"
    TraceStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    with pytest.raises(TraceStoreError, match="version 7"):
        TraceStore(path)
