"""A durable trace store, one row per finished episode: SQLite (WAL mode) or PostgreSQL.

Schema (version 1), the same on both backends::

    meta(key TEXT PRIMARY KEY, value TEXT)           -- schema_version, feature_schema, models, ...
    episodes(
        problem_id    TEXT PRIMARY KEY,              -- resumable collection skips ids present
        split         TEXT NOT NULL,
        behaviour     TEXT NOT NULL,                 -- name of the behaviour gate
        seed          INTEGER NOT NULL,
        reward        INTEGER NOT NULL,              -- R: the routed answer is right
        target_reward INTEGER NOT NULL,              -- R_M: the strongest tier alone is right
        cost          REAL NOT NULL,                 -- FLOPs of the routed answer
        target_flops  REAL NOT NULL,
        n_steps       INTEGER NOT NULL,
        data          TEXT NOT NULL,                 -- the whole Episode as JSON
        created       REAL NOT NULL)
    claims(problem_id TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed REAL NOT NULL)

``TraceStore(path)`` opens a SQLite file; ``TraceStore("postgresql://user@host/db")`` opens the
same store in PostgreSQL (``pip install "stepgraph[postgres]"``), which collectors on several
machines can share. Each episode is written in its own transaction, so a collection that is
killed keeps every episode it finished.

Collectors sharing a store ``claim`` a problem before running it. A claim is a lease: it holds
for ``lease_seconds`` after its owner last renewed it (a collector renews its leases from a
heartbeat while it runs), so the problems of a collector that died are taken over by the others
once its leases lapse (at once on SQLite when the owner was a process on this host that is gone).

Opening checks the store before touching it: a store carries SQLite's ``application_id``
``APPLICATION_ID`` (one of an earlier release, with id 0 and only stepgraph's tables, is stamped
on its first write-open); any other SQLite file is refused without a byte written, as are missing columns, another schema version and another
feature schema. ``readonly=True`` opens without writing anything (``mode=ro``; ``immutable=1``
where the store or its directory is not writable, so no -shm is needed).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

from stepgraph.training.data.records import Episode

from stepgraph.errors import TraceStoreError
from stepgraph.features import SCHEMAS, FeatureSchema

SCHEMA_VERSION = 1
APPLICATION_ID = 0x53_47_54_53  # "SGTS": SQLite's application_id of a stepgraph trace store (set on creation)
LEASE_SECONDS = 120.0
"""How long a claim holds after its owner last renewed it; a collector renews every third of it."""
CLAIM_SECONDS = LEASE_SECONDS  # the former name

_TABLES = {
    "meta": "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "episodes": """CREATE TABLE IF NOT EXISTS episodes (
        problem_id TEXT PRIMARY KEY, split TEXT NOT NULL, behaviour TEXT NOT NULL, seed INTEGER NOT NULL,
        reward INTEGER NOT NULL, target_reward INTEGER NOT NULL, cost REAL NOT NULL, target_flops REAL NOT NULL,
        n_steps INTEGER NOT NULL, data TEXT NOT NULL, created REAL NOT NULL)""",
    "claims": "CREATE TABLE IF NOT EXISTS claims (problem_id TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed REAL NOT NULL)",
}
# PostgreSQL: REAL is 4 bytes there and seeds can pass 2^31; `seq` keeps insertion order (SQLite's rowid).
_PG_TABLES = {
    name: sql.replace("REAL", "DOUBLE PRECISION").replace("seed INTEGER", "seed BIGINT")
    .replace("created DOUBLE PRECISION NOT NULL)", "created DOUBLE PRECISION NOT NULL, seq BIGSERIAL)")
    for name, sql in _TABLES.items()
}
_PG_CREATE_LOCK = 0x5746_7261_7068  # any constant: serialises table creation by concurrent collectors
_EPISODE_COLUMNS = ("problem_id", "split", "behaviour", "seed", "reward", "target_reward", "cost", "target_flops",
                    "n_steps", "data", "created")
_UPSERT_EPISODE = (f"INSERT INTO episodes ({', '.join(_EPISODE_COLUMNS)}) VALUES ({', '.join('?' * len(_EPISODE_COLUMNS))}) "
                   f"ON CONFLICT (problem_id) DO UPDATE SET "
                   + ", ".join(f"{c} = excluded.{c}" for c in _EPISODE_COLUMNS[1:]))
# Takes the lease when nobody holds it, this owner holds it, or the holder's lease lapsed; atomic on both backends.
_TAKE_LEASE = ("INSERT INTO claims (problem_id, owner, claimed) VALUES (?, ?, ?) ON CONFLICT (problem_id) DO UPDATE "
               "SET owner = excluded.owner, claimed = excluded.claimed "
               "WHERE claims.owner = excluded.owner OR claims.claimed < ? RETURNING problem_id")


def is_database_url(location: object) -> bool:
    """Whether a ``--store`` value names a PostgreSQL database rather than a SQLite file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def store_location(text: str) -> str | Path:
    """``--store``'s type: a PostgreSQL URL stays a string, anything else is a SQLite path."""
    return text if is_database_url(text) else Path(text)


def redact(location: str | os.PathLike[str]) -> str:
    """A store location as text, a URL without its password: for messages, logs and artifacts."""
    url = os.fspath(location)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class TraceStore:
    """Open (or create) a trace store.

    Args:
        path: the SQLite file, or a ``postgresql://`` URL (then a ``PostgresTraceStore``).
        create: create the store if it does not exist (otherwise a missing store is an error).
        readonly: open for reading only; nothing is written, so a read-only file can be read.
        feature_schema: the feature schema the caller needs; a store of another one is refused.
            None (default) accepts any schema this stepgraph knows (``stepgraph.features.SCHEMAS``).
        lease_seconds: how long a claim holds without renewal (``LEASE_SECONDS``).

    Raises:
        TraceStoreError: the store is missing (``create=False``), not a SQLite database, corrupted
            or truncated, another program's database, or of another schema version or feature schema.
    """

    _order = "rowid"
    _db: Any  # sqlite3.Connection, or psycopg.Connection in PostgresTraceStore

    def __new__(cls, path: str | Path, **kwargs: Any) -> Self:
        if cls is TraceStore and is_database_url(path):
            return super().__new__(PostgresTraceStore)  # type: ignore[return-value]  # like Path() giving a PosixPath
        return super().__new__(cls)

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool = False,
                 feature_schema: FeatureSchema | None = None, lease_seconds: float = LEASE_SECONDS) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.lease_seconds = lease_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()  # the collector's heartbeat thread shares the connection
        if (readonly or not create) and not self.path.is_file():
            raise TraceStoreError(f"No trace store at {self.path}; run `stepgraph collect --store {self.path}` first.")
        new = not self.path.is_file() or self.path.stat().st_size == 0
        try:
            if not new:
                self._check_foreign()  # before any write: another program's file is left byte for byte
            if readonly:
                self._db = sqlite3.connect(_readonly_uri(self.path), uri=True, timeout=30, check_same_thread=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise TraceStoreError(f"{self.path} failed SQLite's integrity check ({check}); restore it or collect again.")
            self._check_tables(self._tables(), self._episode_columns())
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")  # new, or a store of an earlier release
                self._create(_TABLES)
            self._check_meta(feature_schema)
        except (sqlite3.DatabaseError, OSError) as exc:
            if denied := _permission_problem(self.path, readonly):
                raise TraceStoreError(f"Permission denied: cannot {denied}; the store itself is fine. Fix the "
                                      "permissions" + ("" if readonly else " or open it read-only") + ".") from exc
            raise TraceStoreError(f"{self.path} is not a readable trace store ({exc}); it may be corrupted or truncated.") from exc

    def _check_foreign(self) -> None:
        """Refuse a SQLite file that is not a stepgraph store, reading it without writing anything.

        A store carries ``APPLICATION_ID``; one written by an earlier release has application_id 0,
        user_version 0 and only stepgraph's tables (it is stamped on its first write-open).
        """
        with self.path.open("rb") as file:
            header = file.read(100)
        if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
            raise sqlite3.DatabaseError("file is not a database")
        application_id, user_version = int.from_bytes(header[68:72], "big"), int.from_bytes(header[60:64], "big")
        if application_id == APPLICATION_ID:
            return
        tables: set[str] = set()
        if application_id == 0 and user_version == 0:
            with _closing(sqlite3.connect(_readonly_uri(self.path, inspect=True), uri=True)) as db:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "episodes" in tables and tables <= set(_TABLES):
                return  # a store of an earlier release: the column checks follow
        found = f"application_id {application_id:#x}" if application_id else (
            f"tables {sorted(tables)}" if tables else f"no tables, user_version {user_version}")
        raise TraceStoreError(f"{self.path} is another program's SQLite database ({found}), not a stepgraph trace "
                              "store; it was left unchanged. Pass a new --store path.")

    # -- what differs between the backends -------------------------------------------------------

    def _tables(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} - {"sqlite_sequence"}

    def _episode_columns(self) -> dict[str, tuple[bool, bool]]:
        """Column name -> (NOT NULL, has a default) of the episodes table."""
        return {row[1]: (bool(row[3]), row[4] is not None) for row in self._db.execute("PRAGMA table_info(episodes)")}

    @contextmanager
    def _transaction(self, immediate: bool = False) -> Iterator[Any]:
        """A cursor inside one transaction; ``immediate`` takes the write lock first (claims)."""
        try:
            with self._lock, self._db:
                if immediate:
                    self._db.execute("BEGIN IMMEDIATE")  # one claimer at a time across processes
                yield self._db
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc):  # SQLITE_FULL: "database or disk is full"
                raise
            raise TraceStoreError(f"{self.path}: the disk is full ({exc}); every finished episode is kept (this one was "
                                  "rolled back). Free space and rerun the same command to resume.") from exc

    def _now(self) -> float:
        return time.time()

    # -- shared ----------------------------------------------------------------------------------

    def _create(self, tables: dict[str, str]) -> None:
        with self._transaction() as db:
            for create_table in tables.values():
                db.execute(create_table)
            db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO NOTHING", (str(SCHEMA_VERSION),))

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._transaction() as db:
            return db.execute(sql, params).fetchall()

    def _check_tables(self, tables: set[str], columns: dict[str, tuple[bool, bool]]) -> None:
        """Refuse another program's database, and a store missing columns, before anything is written."""
        if foreign := sorted(tables - set(_TABLES)):
            raise TraceStoreError(f"{self.path} is another program's database (it has tables {foreign}), not a "
                                  "stepgraph trace store; it was left unchanged. Pass a new --store path.")
        if "episodes" in tables:
            if missing := [c for c in _EPISODE_COLUMNS if c not in columns]:
                raise TraceStoreError(f"{self.path}: the episodes table lacks columns {missing}; it was not written by "
                                      "this stepgraph. Pass a new --store path.")
            # Rows are inserted by column name, so only an extra column that needs a value gets in the way.
            required = [name for name, (notnull, default) in columns.items()
                        if name not in _EPISODE_COLUMNS and notnull and not default]
            if required:
                raise TraceStoreError(f"{self.path}: the episodes table has extra required columns {required} that "
                                      "stepgraph does not fill. Pass a new --store path.")
        elif self.readonly:
            raise TraceStoreError(f"{self.path} holds no episodes table; run `stepgraph collect --store {self.path}` first.")

    def _check_meta(self, feature_schema: FeatureSchema | None) -> None:
        version = self.meta("schema_version")
        try:
            readable = int(version) == SCHEMA_VERSION  # stored as text by older writers
        except (TypeError, ValueError):
            readable = False
        if not readable:
            raise TraceStoreError(f"{self.path} has trace schema version {version!r}; this stepgraph reads version "
                                  f"{SCHEMA_VERSION}. Collect a new store with this version.")
        stored = self.meta("feature_schema")
        allowed = [feature_schema.to_dict()] if feature_schema is not None else [s.to_dict() for s in SCHEMAS.values()]
        if stored is not None and stored not in allowed:
            raise TraceStoreError(f"{self.path} holds traces of feature schema {stored}, but this stepgraph computes "
                                  f"{' or '.join(map(str, allowed))}. Collect a new store with this version.")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def meta(self, key: str) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        if not rows:
            return None
        try:
            return json.loads(rows[0][0])
        except (json.JSONDecodeError, TypeError):
            return rows[0][0]

    def set_meta(self, key: str, value: Any) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                       (key, json.dumps(value)))

    def problem_ids(self) -> set[str]:
        return {row[0] for row in self._query("SELECT problem_id FROM episodes")}

    def claim(self, problem_id: str) -> bool:
        """Take the lease on a problem for this collector; False if it is stored or another live collector holds it."""
        with self._transaction(immediate=True) as db:
            now = self._now()
            taken = db.execute(_TAKE_LEASE, (problem_id, self.owner, now, now - self.lease_seconds)).fetchall()
            if not taken:
                holder = db.execute("SELECT owner FROM claims WHERE problem_id = ?", (problem_id,)).fetchone()
                if holder is None or _alive(holder[0]):
                    return False
                # Its owner, a process on this host, is gone: take the lease over at once.
                db.execute("UPDATE claims SET owner = ?, claimed = ? WHERE problem_id = ? AND owner = ?",
                           (self.owner, now, problem_id, holder[0]))
            # Checked after the lease is held: a collector that stored it meanwhile has committed by now.
            if db.execute("SELECT 1 FROM episodes WHERE problem_id = ?", (problem_id,)).fetchone():
                db.execute("DELETE FROM claims WHERE problem_id = ? AND owner = ?", (problem_id, self.owner))
                return False
            return True

    def renew(self) -> None:
        """Renew every lease this collector holds (its heartbeat)."""
        with self._transaction() as db:
            db.execute("UPDATE claims SET claimed = ? WHERE owner = ?", (self._now(), self.owner))

    def release(self) -> None:
        """Drop every lease this collector holds, so a rerun need not wait for them to lapse."""
        with self._transaction() as db:
            db.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))

    def add(self, episode: Episode, split: str) -> bool:
        """Write one finished episode and drop its claim, atomically.

        Returns whether the problem was new to the store (an id already present is replaced).
        """
        row = (episode.problem_id, split, episode.behaviour, episode.seed, episode.reward, episode.target_reward,
               episode.cost, episode.target_flops, len(episode.steps), json.dumps(episode.to_dict()), time.time())
        with self._transaction() as db:
            new = db.execute("SELECT 1 FROM episodes WHERE problem_id = ?", (episode.problem_id,)).fetchone() is None
            db.execute(_UPSERT_EPISODE, row)
            db.execute("DELETE FROM claims WHERE problem_id = ?", (episode.problem_id,))
        return new

    def __len__(self) -> int:
        return self._query("SELECT COUNT(*) FROM episodes")[0][0]

    def episodes(self, split: str | None = None) -> Iterator[Episode]:
        """Episodes in insertion order, optionally of one split.

        Raises:
            TraceStoreError: a row whose JSON is unreadable or not an Episode.
        """
        query = "SELECT problem_id, reward, target_reward, data FROM episodes" + (" WHERE split = ?" if split else "") + f" ORDER BY {self._order}"
        try:
            rows = self._query(query, (split,) if split else ())
        except Exception as exc:  # sqlite3.DatabaseError or psycopg.Error
            raise TraceStoreError(f"Could not read episodes from {self.path}: {exc}") from exc
        episodes = []
        for problem_id, reward, target_reward, data in rows:
            try:
                episode = Episode.from_dict(json.loads(data))
            except (json.JSONDecodeError, TypeError, KeyError) as exc:
                raise TraceStoreError(f"Episode {problem_id!r} in {self.path} is corrupted: {exc}") from exc
            # The columns are written from the JSON; a disagreement means the row was edited or damaged.
            for name, column, stored in (("reward", reward, episode.reward), ("target_reward", target_reward, episode.target_reward)):
                if column != stored:
                    raise TraceStoreError(f"Episode {problem_id!r} in {self.path} is inconsistent: its {name} column is "
                                          f"{column!r} but its episode data has {stored!r}; restore the store or collect again.")
            episodes.append(episode)
        self._check_observations(episodes)
        yield from episodes

    def _check_observations(self, episodes: list[Episode]) -> None:
        """Refuse steps whose stored observation lacks a feature of the store's schema (training would
        otherwise ignore the feature without a word). A feature the backend did not report is stored
        as None and is fine; features of a newer schema than the store's are simply not there."""
        schema = self.meta("feature_schema")
        names = schema.get("names", []) if isinstance(schema, dict) else []
        observations = [step.observation for episode in episodes for step in episode.steps]
        for name in names:
            if lacking := sum(name not in observation for observation in observations):
                raise TraceStoreError(f"{lacking} of {len(observations)} steps in {self.path} lack the feature {name!r} in "
                                      "their stored observation, though the store's feature schema lists it; the traces "
                                      "were edited or damaged. Collect them again.")


class PostgresTraceStore(TraceStore):
    """The trace store in a PostgreSQL database (``TraceStore("postgresql://...")`` returns one).

    Same schema and semantics as the SQLite store; ``path`` is the URL without its password.
    """

    _order = "seq"

    def __init__(self, path: str | Path, *, create: bool = True, readonly: bool = False,
                 feature_schema: FeatureSchema | None = None, lease_seconds: float = LEASE_SECONDS) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise TraceStoreError('A postgresql:// store needs psycopg: pip install "stepgraph[postgres]".') from exc
        url = str(path)
        self.path = redact(url)  # type: ignore[assignment]  # a URL (password hidden), shown in messages
        self.readonly = readonly
        self.lease_seconds = lease_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.RLock()
        self._errors = psycopg.Error
        try:
            self._db = psycopg.connect(url, connect_timeout=10, autocommit=True)  # transactions are explicit blocks
        except psycopg.Error as exc:
            raise TraceStoreError(f"Could not connect to the trace store {self.path}: {str(exc).strip()}") from exc
        try:
            self._db.read_only = readonly
            tables = self._tables()
            if not tables and (readonly or not create):
                raise TraceStoreError(f"No trace store at {self.path}; run `stepgraph collect --store URL` first.")
            self._check_tables(tables, self._episode_columns())
            if not readonly:
                self._create(_PG_TABLES)
            self._check_meta(feature_schema)
        except psycopg.Error as exc:
            self._db.close()
            raise TraceStoreError(f"{self.path} is not a readable trace store: {str(exc).strip()}") from exc
        except TraceStoreError:
            self._db.close()
            raise

    def _create(self, tables: dict[str, str]) -> None:
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(?)", (_PG_CREATE_LOCK,))  # collectors starting together
            super()._create(tables)

    def _tables(self) -> set[str]:
        names = self._query("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
        return {name for (name,) in names}

    def _episode_columns(self) -> dict[str, tuple[bool, bool]]:
        rows = self._query("SELECT column_name, is_nullable, column_default FROM information_schema.columns "
                           "WHERE table_schema = current_schema() AND table_name = 'episodes'")
        return {name: (nullable == "NO", default is not None) for name, nullable, default in rows}

    @contextmanager
    def _transaction(self, immediate: bool = False) -> Iterator[Any]:
        # Row locks and ON CONFLICT make claims atomic here; no table lock is needed.
        with self._lock, self._db.transaction():
            yield _QmarkCursor(self._db.cursor())

    def _now(self) -> float:
        # The database's clock, so collectors on machines with skewed clocks agree on leases.
        return float(self._db.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])


class _QmarkCursor:
    """psycopg with the SQLite module's ``?`` placeholders, so both backends run the same statements."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: tuple = ()) -> Any:
        return self._cursor.execute(sql.replace("?", "%s"), params)


@contextmanager
def _closing(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        yield db
    finally:
        db.close()


def _readonly_uri(path: Path, inspect: bool = False) -> str:
    """A read-only SQLite URI; ``immutable`` (no -shm, no locks) where SQLite could not create the
    -shm beside the store, or, to ``inspect`` a file, when there is no -wal to read anyway."""
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    no_wal = not Path(f"{path}-wal").exists()
    immutable = not writable or (inspect and no_wal)
    return f"{path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")


def _permission_problem(path: Path, readonly: bool) -> str | None:
    """What the process may not do to the store (read it, or write it or its directory), if anything."""
    if not os.access(path, os.R_OK) and path.exists():
        return f"read {path}"
    if not readonly and not (os.access(path, os.W_OK) if path.exists() else True):
        return f"write {path}"
    if not readonly and not os.access(path.parent, os.W_OK):
        return f"write in {path.parent} (SQLite keeps its -wal and -shm files beside the store)"
    return None


def _alive(owner: str) -> bool:
    """Whether a claim's owner may still be running: a process on this host that exists, or any other host."""
    host, pid, _ = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return True  # cannot tell; the lease lapses after lease_seconds without renewal
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True
