"""The trace store on a real PostgreSQL server (started on 127.0.0.1 by a fixture) and leases on both backends."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from stepgraph.training.data.records import Episode, StepRecord
from stepgraph.training.data.store import PostgresTraceStore, TraceStore, redact, store_location

from stepgraph.errors import TraceStoreError

pytestmark = pytest.mark.integration


def _episode(i: int) -> Episode:
    step = StepRecord(0, {"logit_confidence": 9.0}, 1, 0.4, "1+1=3", "1+1=2", False, True, 10.0, 80.0, 90.0)
    return Episode(f"p{i}", "q", "2", [step], reward=1, target_reward=1, target_flops=160.0, behaviour="b", seed=2**40 + i)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    if request.param == "sqlite":
        return tmp_path / "t.sqlite"
    return request.getfixturevalue("postgres_server")()


def test_round_trip_in_insertion_order_on_both_backends(location):
    with TraceStore(location) as store:
        assert isinstance(store, PostgresTraceStore) == isinstance(location, str)
        for i in (3, 1, 2):
            assert store.add(_episode(i), "train")
        assert not store.add(_episode(1), "train")  # already stored: replaced, and said so
        store.add(_episode(9), "calibration")
        store.set_meta("models", [{"name": "draft"}])
    with TraceStore(location, create=False, readonly=True) as store:
        assert len(store) == 4 and store.problem_ids() == {"p1", "p2", "p3", "p9"}
        assert [e.problem_id for e in store.episodes("train")] == ["p3", "p1", "p2"]
        assert next(store.episodes("calibration")) == _episode(9)  # a seed past 2^31 survives
        assert store.meta("models") == [{"name": "draft"}]


def test_a_lease_holds_until_it_lapses_and_is_kept_by_renewal(location):
    with TraceStore(location, lease_seconds=1.0) as a, TraceStore(location, lease_seconds=1.0) as b:
        assert a.claim("p0") and not b.claim("p0")
        for _ in range(3):  # a's heartbeat keeps it past the lease
            time.sleep(0.5)
            a.renew()
            assert not b.claim("p0")
        time.sleep(1.2)  # a stopped renewing (died): b takes the problem over
        assert b.claim("p0") and not a.claim("p0")
        b.add(_episode(0), "train")
        assert not a.claim("p0") and not b.claim("p0")  # stored: nobody runs it again
        assert a.claim("p1") and not b.claim("p1")
        a.release()  # a collector that stops lets go at once
        assert b.claim("p1")


def test_a_foreign_postgres_database_is_refused_unchanged(postgres_server):
    import psycopg

    url = postgres_server()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        db.execute("CREATE TABLE users (id INT)")
    with pytest.raises(TraceStoreError, match="another program's database"):
        TraceStore(url)
    with psycopg.connect(url) as db:
        tables = {r[0] for r in db.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert tables == {"meta", "users"}


def test_unreachable_server_and_secrets_in_messages(postgres_server):
    with pytest.raises(TraceStoreError, match="Could not connect") as raised:
        TraceStore("postgresql://stepgraph:hunter2@127.0.0.1:1/traces")
    assert "hunter2" not in str(raised.value) and "***" in str(raised.value)
    assert redact("postgresql://u:pw@h:5/db") == "postgresql://u:***@h:5/db"
    assert store_location("postgresql://h/db") == "postgresql://h/db" and str(store_location("a/b.sqlite")) == "a/b.sqlite"


def test_a_store_password_stays_out_of_the_policy_the_summary_and_the_errors(postgres_server, tmp_path, capsys):
    from test_faults import _store

    from stepgraph.artifacts.policy import PolicyArtifact
    from stepgraph.cli import main

    url = postgres_server().replace("stepgraph@", "stepgraph:hunter2@")  # the fixture's server trusts: any password works
    _store(url)
    out = tmp_path / "policy"
    assert main(["train", "--store", url, "--split", "heldout", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds no heldout episodes" in err and "stepgraph:***@" in err and "hunter2" not in err
    assert main(["signals", "--store", url]) != 0  # the store has no calibration split
    err = capsys.readouterr().err
    assert "no 'calibration' episodes" in err and "stepgraph:***@" in err and "hunter2" not in err
    assert main(["train", "--store", url, "--out", str(out), "--steps", "3", "--calibration-split", ""]) == 0
    captured = capsys.readouterr()
    assert PolicyArtifact.load(out).training["store"] == redact(url)
    assert "hunter2" not in captured.out + captured.err + (out / "policy.json").read_text()


COLLECTOR = textwrap.dedent('''
    import json, sys, time
    sys.path.insert(0, {tests!r})
    from scripted import ScriptedModel
    from stepgraph.training.collection.collect import Item, collect
    from stepgraph.training.data.store import TraceStore

    class Slow(ScriptedModel):
        def generate_step(self, *args, **kwargs):
            time.sleep(0.02)
            return super().generate_step(*args, **kwargs)

    class Verifier:
        def verify(self, question, reference, prior_steps, step):
            return True

    tiers = lambda: [Slow("draft", 10, ["1+1=2", "\\\\boxed{{2}}"]), Slow("target", 100, ["1+1=2", "\\\\boxed{{2}}"])]
    items = [Item(f"p{{i}}", f"question {{i}}", "2") for i in range({n})]
    with TraceStore(sys.argv[1], lease_seconds=2.0) as store:
        print(json.dumps(collect(store, items, tiers, Verifier(), progress=False)), flush=True)
''')


def test_four_collectors_share_a_postgres_store_and_take_over_a_killed_ones_problems(postgres_server, tmp_path):
    url, n = postgres_server(), 60
    script = tmp_path / "collector.py"
    script.write_text(COLLECTOR.format(tests=os.path.dirname(__file__), n=n))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for _ in range(4)]
    with TraceStore(url) as store:
        deadline = time.time() + 120
        while len(store) < 8 and time.time() < deadline:  # the collectors are under way
            time.sleep(0.1)
        victim = procs[0]
        held = 0
        while not held and time.time() < deadline:  # kill it while it holds a lease (stopped first: no race)
            victim.send_signal(signal.SIGSTOP)
            held = store._query("SELECT COUNT(*) FROM claims WHERE owner LIKE ?", (f"%:{victim.pid}:%",))[0][0]
            if not held:
                victim.send_signal(signal.SIGCONT)
                time.sleep(0.01)
        assert held, "the collector to kill never held a lease"
        victim.send_signal(signal.SIGKILL)
        outputs = [p.communicate(timeout=240) for p in procs[1:]]
        assert victim.wait() == -signal.SIGKILL
        for p, (out, err) in zip(procs[1:], outputs):
            assert p.returncode == 0, err.decode()[-2000:]
        summaries = [json.loads(out.decode().strip().splitlines()[-1]) for out, _ in outputs]
        # Every problem is stored exactly once: no survivor ran a problem that was already stored, and
        # the killed collector's leased problems were taken over without a rerun.
        assert store.problem_ids() == {f"p{i}" for i in range(n)}
        assert sum(s["duplicates"] for s in summaries) == 0
        assert store._query("SELECT COUNT(*) FROM claims")[0][0] == 0
        assert all(s["total"] == n for s in summaries)
