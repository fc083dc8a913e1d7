"""The SQLite trace store: round trip, resumability, and clear errors on damage."""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from stepgraph.training.data.records import Episode, StepRecord
from stepgraph.training.data.store import APPLICATION_ID, TraceStore, _readonly_uri

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


# --- another program's file is refused without a byte written; earlier stores still open ---------------


def _foreign(path, *statements):
    with sqlite3.connect(path) as db:
        for statement in statements:
            db.execute(statement)
    db.close()
    return path


@pytest.mark.parametrize("statements, found", [
    (["CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)", "INSERT INTO meta VALUES ('k', 'v')"], r"tables \['meta'\]"),
    (["CREATE TABLE users (name TEXT)", "INSERT INTO users VALUES ('ann')"], r"tables \['users'\]"),
    (["PRAGMA user_version = 7"], "no tables, user_version 7"),
    (["PRAGMA application_id = 1234", "CREATE TABLE episodes (problem_id TEXT)"], "application_id 0x4d2"),
])
@pytest.mark.parametrize("readonly", [False, True])
def test_another_programs_file_is_refused_without_writing_a_byte(tmp_path, statements, found, readonly):
    path = _foreign(tmp_path / "app.sqlite", *statements)
    before = path.read_bytes()
    with pytest.raises(TraceStoreError, match=f"another program's SQLite database \\({found}\\).*left unchanged"):
        TraceStore(path, readonly=readonly)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite"]  # no -wal, -shm or -journal


def test_new_stores_are_marked_and_earlier_stores_are_stamped_on_write(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    for path in (tmp_path / "new.sqlite", empty):
        TraceStore(path).close()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    old = tmp_path / "old.sqlite"  # as an earlier release wrote it: application_id 0
    with TraceStore(old) as store:
        store.add(_episode(0), "train")
    with sqlite3.connect(old) as db:
        db.execute("PRAGMA application_id = 0")
    with TraceStore(old, readonly=True) as store:  # read-only: read, not stamped
        assert store.problem_ids() == {"p0"}
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0
    TraceStore(old).close()
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


# --- read-only stores are opened read-only; permissions are named as such ------------------------------


def test_a_store_that_cannot_be_written_is_opened_immutable(tmp_path, monkeypatch):
    path = tmp_path / "t.sqlite"
    TraceStore(path).close()
    assert _readonly_uri(path).endswith("?mode=ro")
    monkeypatch.setattr(os, "access", lambda p, mode: mode != os.W_OK)
    assert _readonly_uri(path).endswith("?mode=ro&immutable=1")
    with TraceStore(path, readonly=True) as store:
        assert len(store) == 0


def _as_user(code: str) -> subprocess.CompletedProcess:
    """Run Python without root's override of file modes (setpriv), so permissions are enforced."""
    as_user = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: file modes cannot be enforced")
        as_user = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run([*as_user, sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def test_a_wal_store_in_a_read_only_directory_is_read_and_permissions_are_named():
    directory = Path(tempfile.mkdtemp())
    try:
        path = directory / "t.sqlite"
        with TraceStore(path) as store:  # WAL mode; closing removes -wal and -shm
            store.add(_episode(0), "train")
        path.chmod(0o444)
        directory.chmod(0o555)
        read = _as_user(f"from stepgraph.training.data.store import TraceStore\nprint(len(TraceStore({str(path)!r}, readonly=True)))")
        assert read.returncode == 0 and read.stdout.strip() == "1", read.stderr
        write = _as_user(f"from stepgraph.training.data.store import TraceStore\nTraceStore({str(path)!r})")
        assert "Permission denied: cannot write" in write.stderr and "the store itself is fine" in write.stderr
        assert "corrupted" not in write.stderr
        directory.chmod(0o755)
        path.chmod(0o000)
        read = _as_user(f"from stepgraph.training.data.store import TraceStore\nTraceStore({str(path)!r}, readonly=True)")
        assert "Permission denied: cannot read" in read.stderr and "corrupted" not in read.stderr
    finally:
        directory.chmod(0o755)
        shutil.rmtree(directory)


# --- a full disk during collection: one line, every finished episode kept, resumable ------------------


def test_a_full_disk_during_collect_is_one_line_and_resumes(tmp_path, monkeypatch, capsys):
    from stepgraph.cli import main

    path = tmp_path / "traces.sqlite"
    assert main(["collect", "--store", str(path), "--problems", "1"]) == 0
    connect = sqlite3.connect

    def full_disk(*args, **kwargs):  # the file may not grow by a page: SQLite's SQLITE_FULL
        db = connect(*args, **kwargs)
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        return db

    monkeypatch.setattr(sqlite3, "connect", full_disk)
    capsys.readouterr()
    assert main(["collect", "--store", str(path), "--problems", "3"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if "stepgraph: error:" in line]  # after the progress bar
    assert "disk is full" in line and "every finished episode is kept" in line and "rerun the same command" in line
    monkeypatch.setattr(sqlite3, "connect", connect)
    with TraceStore(path, readonly=True) as store:
        kept = len(store)
        assert 1 <= kept < 3
    with sqlite3.connect(path) as db:  # the failed collector let go of its leases: the rerun below waits for none
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
    assert main(["collect", "--store", str(path), "--problems", "3"]) == 0
    with TraceStore(path, readonly=True) as store:
        assert len(store) == 3


@pytest.mark.parametrize("column", ["reward", "target_reward"])
def test_a_reward_column_that_disagrees_with_the_episode_is_refused(tmp_path, column):
    path = tmp_path / "t.sqlite"
    with TraceStore(path) as store:
        store.add(_episode(0), "train")
        store.add(_episode(1), "train")
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE episodes SET {column} = 0 WHERE problem_id = 'p1'")
    with TraceStore(path, readonly=True) as store, pytest.raises(TraceStoreError, match=f"'p1'.*{column} column is 0 but its episode data has 1"):
        list(store.episodes())


# --- train refuses observations that lack a feature of the schema -----------------------------------


def _train_store(path, drop: str | None):
    from stepgraph.features import CONFIDENCE_SCHEMA

    with TraceStore(path) as store:
        store.set_meta("feature_schema", CONFIDENCE_SCHEMA.to_dict())
        for i in range(6):
            observation = {n: float(i % 3) for n in CONFIDENCE_SCHEMA.names} | {"api_confidence": None}  # not reported
            if drop and i % 2:
                del observation[drop]
            step = StepRecord(0, observation, i % 2, 0.4, "1+1=3", "1+1=2", False, True, 10.0, 80.0, 90.0)
            store.add(Episode(f"p{i}", "q", "2", [step], reward=1, target_reward=1, target_flops=160.0, behaviour="b", seed=i),
                      "train")
    return path


def test_train_refuses_stored_observations_that_lack_a_feature(tmp_path, capsys):
    from stepgraph.cli import main

    argv = ["train", "--out", str(tmp_path / "p"), "--steps", "1", "--calibration-split", ""]
    assert main([*argv, "--store", str(_train_store(tmp_path / "ok.sqlite", None))]) == 0  # None: not reported, fine
    capsys.readouterr()
    assert main([*argv, "--store", str(_train_store(tmp_path / "t.sqlite", "step_tokens"))]) == 2
    err = capsys.readouterr().err
    assert "3 of 6 steps in" in err and "lack the feature 'step_tokens'" in err and "Traceback" not in err
