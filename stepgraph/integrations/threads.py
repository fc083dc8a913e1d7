"""Conversations across ``stepgraph serve`` replicas: LangGraph's Postgres checkpointer (``--checkpointer``).

A request names its thread with the ``x-stepgraph-thread-id`` header, else the request's ``user``
field; without either it gets a new thread. The thread's checkpoints (each question's answer, and
where an interrupted answer stopped) live in PostgreSQL, so they survive a replica's restart and
any replica behind the balancer continues the thread. The response's ``stepgraph`` field returns
``thread_id`` and ``answers`` (how many questions the thread has been asked).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from stepgraph.errors import ConfigError

THREAD_HEADER = "x-stepgraph-thread-id"
_SANE_THREAD = re.compile(r"^[A-Za-z0-9._:@\-]{1,128}$")
_SETUP_LOCK = 0x5745_7067  # one replica at a time creates or migrates the checkpoint tables


def thread_id_of(headers: Mapping[str, str], user: str | None) -> str | None:
    """The request's thread id (header, else ``user``), None when it names none; ValueError if malformed."""
    given = headers.get(THREAD_HEADER) or user
    if given is None:
        return None
    if not _SANE_THREAD.match(given):
        raise ValueError(f"The thread id ({THREAD_HEADER} header or 'user') must be 1-128 letters, digits or ._:@-.")
    return given


def new_thread_id() -> str:
    return uuid.uuid4().hex


def check_url(url: str) -> str:
    """``url`` if it names a PostgreSQL database, else ConfigError (no password in the message)."""
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"--checkpointer must be a postgresql:// URL; got one starting {url.split(':')[0]!r}.")
    return url


@asynccontextmanager
async def postgres_checkpointer(url: str) -> AsyncIterator[Any]:
    """An ``AsyncPostgresSaver`` on a connection pool to ``url``, its tables created if missing."""
    check_url(url)
    try:
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool
    except ImportError as exc:
        raise ConfigError("--checkpointer needs the postgres extra: pip install 'stepgraph[postgres]'.") from exc
    pool = AsyncConnectionPool(url, open=False, max_size=8,
                               kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row})
    await pool.open(wait=True, timeout=30)
    try:
        saver = AsyncPostgresSaver(pool)  # type: ignore[arg-type]  # a pool is one of its accepted connections
        async with pool.connection() as lock:
            await lock.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK,))
            try:
                await saver.setup()
            finally:
                await lock.execute("SELECT pg_advisory_unlock(%s)", (_SETUP_LOCK,))
        yield saver
    finally:
        await pool.close()


async def answers_on(checkpointer: Any, thread_id: str) -> int:
    """How many questions the thread has been asked (each starts with an input checkpoint)."""
    config = {"configurable": {"thread_id": thread_id}}
    return sum([1 async for _ in checkpointer.alist(config, filter={"source": "input"})])
