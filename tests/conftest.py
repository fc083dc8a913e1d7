import contextlib
import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from stepgraph.testbed.vllm_serving import free_port

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)  # CI has 2 cores; vLLM-style servers started by fixtures need the other


@pytest.fixture(scope="session")
def vllm_ready(request: pytest.FixtureRequest) -> None:
    """vLLM is importable and its caches go to pytest's cache folder (kept between sessions).

    Without vLLM the real-vLLM tests skip, except where STEPGRAPH_REQUIRE_VLLM=1 (CI) makes that a failure.
    """
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("STEPGRAPH_REQUIRE_VLLM") == "1":
            pytest.fail("STEPGRAPH_REQUIRE_VLLM=1 but vLLM is not installed; see the README's test command.")
        pytest.skip('vLLM is not installed (pip install ".[vllm]", see the README)')
    from stepgraph.testbed.vllm_serving import configure_environment

    configure_environment(request.config.cache.mkdir("vllm"))


@pytest.fixture(scope="module")
def servers(vllm_ready, tmp_path_factory):
    """vLLM OpenAI-compatible servers for the shipped draft (raw logits) and target (log-probs), one pair per module."""
    from stepgraph.testbed import DRAFT_MODEL_DIR, TARGET_MODEL_DIR
    from stepgraph.testbed.vllm_serving import serve

    logs = tmp_path_factory.mktemp("vllm-logs")
    with contextlib.ExitStack() as stack:
        draft = stack.enter_context(serve(DRAFT_MODEL_DIR, name="draft", log=stack.enter_context(open(logs / "draft.log", "wb"))))
        target = stack.enter_context(serve(TARGET_MODEL_DIR, name="target", logprobs_mode="raw_logprobs",
                                           log=stack.enter_context(open(logs / "target.log", "wb"))))
        yield {"draft": draft, "target": target}


def _postgres_bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server on 127.0.0.1 (Debian's `postgresql` package), one per test session.

    Yields a function that creates a fresh database and returns its URL. Without the server's
    binaries the tests skip, except where STEPGRAPH_REQUIRE_POSTGRES=1 (CI) makes that a failure.
    """
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        if os.environ.get("STEPGRAPH_REQUIRE_POSTGRES") == "1":
            pytest.fail("STEPGRAPH_REQUIRE_POSTGRES=1 but PostgreSQL is not installed (apt-get install postgresql).")
        pytest.skip("PostgreSQL's server binaries are not installed (apt-get install postgresql)")
    psycopg = pytest.importorskip("psycopg")
    # Not under pytest's tmp folder: that is private to root, and the server runs as another user.
    root = Path(tempfile.mkdtemp(prefix="stepgraph-postgres-"))
    # PostgreSQL refuses to run as root: run it as the `postgres` user the Debian package creates.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "stepgraph", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True)
    options = f"-h 127.0.0.1 -p {port} -k {root} -F"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start"],
                   check=True, capture_output=True)
    admin = f"postgresql://stepgraph@127.0.0.1:{port}/postgres"
    count = itertools.count()

    def new_database() -> str:
        name = f"traces_{next(count)}"
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return f"postgresql://stepgraph@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
