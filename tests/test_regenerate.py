"""`stepgraph regenerate`: its stages are the documented commands and it resumes. (End to end at tiny size it takes
about 20 min here, too long for the slow tier: see the smoke in the issue-28 report.)"""

import dataclasses
import json
from pathlib import Path

import pytest
from cli_json import run
from stepgraph.training.regenerate import Sizes, dependencies, stages

from stepgraph import testbed
from stepgraph.cli import build_parser, main
from stepgraph.cli.dataclass_options import dataclass_from_args
from stepgraph.testbed import task, wordproblems
from stepgraph.testbed import testbed_task as shipped_task

TINY = Sizes(train_problems=30, calibration_problems=50, policy_steps=20, tier_train_problems=30, tier_calibration_problems=50,
             tier_calibration_runs=0, allocator_steps=10, radar_train_problems=40, radar_calibration_problems=15,
             radar_problems=10, bench_problems=10, bench_calibration_problems=8, taxonomy_problems=20)
TINY_OPTIONS = [x for f in dataclasses.fields(Sizes) for value in [getattr(TINY, f.name)]
                for x in (f"--{f.name.replace('_', '-')}", *map(str, value if isinstance(value, tuple) else [value]))]


def test_every_stage_is_a_stepgraph_command_line_and_only_v2_has_a_taxonomy(tmp_path, capsys, monkeypatch):
    listed = stages(tmp_path, Sizes())
    names = [name for name, _ in listed]
    assert len(set(names)) == len(names)
    assert ("taxonomy" in names) == (shipped_task() is wordproblems)  # the taxonomy judges task v2's steps
    for module in (task, wordproblems):  # either task's tiers, whichever ships
        monkeypatch.setattr(testbed, "testbed_task", lambda module=module: module)
        assert ("taxonomy" in dict(stages(tmp_path, Sizes()))) == (module is wordproblems)
    monkeypatch.undo()
    for _, argv in listed:
        build_parser().parse_args(argv)  # exits on an unknown option
    commands = dict(listed)
    assert commands["collect-train"][-2:] == ["--problems", "600"] and commands["bench"][-3:] == ["--seeds", "0", "1"]
    assert names.index("policy-default") < names.index("bench") < names.index("tiers") < names.index("policy-three-tier")
    after = dependencies(listed)  # what --jobs waits for
    assert after["bench"] == {"collect-train", "collect-calibration", "policy-default"}
    assert after["policy-three-tier"] == {"tiers"} and "radar-fit" in after["radar-bench"]
    listed_by_cli = run(capsys, "regenerate", "--out", str(tmp_path), "--list", *TINY_OPTIONS)
    assert listed_by_cli["collect-train"] == "stepgraph " + " ".join(dict(stages(tmp_path, TINY))["collect-train"])


def test_refinement_rounds_each_run_at_the_calibrated_kappa_of_the_round_before(tmp_path, capsys):
    """`--refine-kappa-runs N ...`: one more round per value, each refining the round before after calibrating its κ on
    N live runs; tuple sizes take one value per word (`--tier-offsets 0 1.5`, not the characters of "(0, 1.5)")."""
    policies = tmp_path / "policies"
    listed = run(capsys, "regenerate", "--out", str(tmp_path), "--list", "--tier-offsets", "0", "1.5", "--refine-kappa-runs", "800")
    assert listed["policy-three-tier-refined"].endswith(f"--seed 0 --escalate-to next --tier-offsets 0.0 1.5 --out {policies}/three_tier_refined")
    assert listed["policy-three-tier-refined-2-kappa"] == (f"stepgraph calibrate --policy {policies}/three_tier_refined --runs 800 "
                                                           f"--concurrency 2 --out {policies}/three_tier_refined_kappa")
    assert listed["policy-three-tier-refined-2"] == (f"stepgraph refine --policy {policies}/three_tier_refined_kappa --problems 1600 "
                                                     f"--seed 1 --out {policies}/three_tier_refined_2")
    assert "policy-three-tier-refined-3" not in listed
    parsed = build_parser().parse_args(["regenerate", "--out", str(tmp_path), "--refine-kappa-runs", "800", "400"])
    assert dataclass_from_args(Sizes, parsed).refine_kappa_runs == (800, 400)  # ints, though the default is empty
    with pytest.raises(SystemExit):
        build_parser().parse_args(["regenerate", "--out", str(tmp_path), "--refine-kappa-runs", "many"])
    assert "invalid int value: 'many'" in capsys.readouterr().err
    assert listed["policy-three-tier-runs"].startswith(f"stepgraph calibrate --policy {policies}/three_tier_refined_2 --runs 1600")
    after = dependencies(stages(tmp_path, dataclasses.replace(Sizes(), refine_kappa_runs=(1600, 400))))
    assert after["policy-three-tier-refined-3"] == {"policy-three-tier-refined-3-kappa"}
    assert after["policy-three-tier-runs"] == {"policy-three-tier-refined-3"}
    one_round = dict(stages(tmp_path, Sizes()))  # the default: the one round shipped
    assert "policy-three-tier-refined-2" not in one_round
    assert one_round["policy-three-tier-runs"][:3] == ["calibrate", "--policy", f"{policies}/three_tier_refined"]


def test_the_shipped_three_tier_kappa_is_calibrated_under_the_pac_bound_unless_delta_is_zero(tmp_path, capsys):
    shipped = run(capsys, "regenerate", "--out", str(tmp_path), "--list")["policy-three-tier-runs"]
    assert " --runs 1600 --concurrency 2 --delta 0.1 --out " in shipped
    split_conformal = run(capsys, "regenerate", "--out", str(tmp_path), "--list", "--tier-kappa-delta", "0")
    assert "--delta" not in split_conformal["policy-three-tier-runs"]


def test_a_finished_stage_is_skipped_and_an_unknown_one_is_refused(tmp_path, capsys):
    (tmp_path / "stages").mkdir()
    for name, _ in stages(tmp_path, TINY):
        (tmp_path / "stages" / f"{name}.json").write_text("{}")
    assert main(["regenerate", "--out", str(tmp_path), *TINY_OPTIONS]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {} and len(err.splitlines()) == len(stages(tmp_path, TINY))
    assert all(line.endswith("skipped (done)") for line in err.splitlines())
    assert main(["regenerate", "--out", str(tmp_path), "--stage", "colect-train"]) == 2
    assert "Unknown stage(s) ['colect-train']" in capsys.readouterr().err


def test_jobs_run_independent_stages_side_by_side_and_a_dependent_one_after(tmp_path, monkeypatch, capsys):
    """`--jobs 2`: stages whose paths do not meet start together; one that names another's output waits for it;
    a failed stage stops what depends on it, keeps what finished, and says where its output is."""
    from stepgraph.training import regenerate

    first, second = tmp_path / "first", tmp_path / "second"
    listed = [("first", ["regenerate", "--out", str(first), "--list"]),
              ("second", ["regenerate", "--out", str(second), "--list"]),
              ("reads-first", ["regenerate", "--out", str(first / "inner"), "--list"]),
              ("fails", ["regenerate", "--out", str(second), "--stage", "no-such-stage"]),
              ("after-failure", ["regenerate", "--out", str(second / "inner"), "--list"])]
    assert regenerate.dependencies(listed) == {"first": set(), "second": set(), "reads-first": {"first"},
                                               "fails": {"second"}, "after-failure": {"second", "fails"}}
    monkeypatch.setattr(regenerate, "stages", lambda out, sizes: listed)
    assert main(["regenerate", "--out", str(tmp_path), "--jobs", "2"]) == 2
    err = capsys.readouterr().err
    events = [line.split(": ")[1] + (" started" if line.endswith("(started)") else " done" if "done in" in line else "")
              for line in err.splitlines() if line.startswith("regenerate: ")]
    assert events[:2] == ["first started", "second started"]  # side by side
    assert events.index("reads-first started") > events.index("first done")
    assert "fails: failed (exit 2)" in err and "Stage(s) ['fails'] failed" in err and "after-failure started" not in events
    done = {p.stem for p in (tmp_path / "stages").glob("*.json")}
    assert done == {"first", "second", "reads-first"}
    assert json.loads((tmp_path / "stages" / "first.json").read_text())["result"]["collect-train"].startswith("stepgraph collect")
    assert "no-such-stage" in (tmp_path / "stages" / "fails.err").read_text()
    # Run again: the finished stages are skipped, the failed one is tried again.
    assert main(["regenerate", "--out", str(tmp_path), "--jobs", "2"]) == 2
    assert "first: skipped (done)" in capsys.readouterr().err


def test_sigterm_to_regenerate_jobs_stops_the_stages_it_started(tmp_path):
    """`kill` (or a CI timeout) on `regenerate --jobs N` leaves no stage running as an orphan."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = ("import sys\nfrom stepgraph.training import regenerate\n"
              "regenerate.stages = lambda out, sizes: [('serve', ['serve', '--port', sys.argv[2]])]  # runs until stopped\n"
              "from stepgraph.cli import main\nsys.exit(main(['regenerate', '--out', sys.argv[1], '--jobs', '2']))\n")
    scheduler = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(port)], stderr=subprocess.DEVNULL)

    def children() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == scheduler.pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
        return found

    deadline = time.monotonic() + 60
    while not children() and time.monotonic() < deadline and scheduler.poll() is None:
        time.sleep(0.2)
    stage = children()
    assert stage, "the stage never started"
    scheduler.send_signal(signal.SIGTERM)
    assert scheduler.wait(timeout=60) != 0
    assert not Path(f"/proc/{stage[0]}").exists() or "Z" in Path(f"/proc/{stage[0]}/stat").read_text().rsplit(")", 1)[1][:3]
    assert not (tmp_path / "stages" / "serve.json").exists()  # stopped, so not recorded as done


def test_jobs_from_a_thread_other_than_main_run_without_the_signal_handler(tmp_path):
    """Only the main thread may set a signal handler: run_stages(jobs=2) from another thread still runs its stages."""
    import threading

    from stepgraph.cli.regenerate import _run_side_by_side

    (tmp_path / "stages").mkdir()
    done: dict = {}
    stage = [("listing", ["regenerate", "--out", str(tmp_path / "x"), "--list"])]
    worker = threading.Thread(target=lambda: done.update(_run_side_by_side(stage, ["listing"], tmp_path / "stages", 2, print)))
    worker.start()
    worker.join(timeout=120)
    assert list(done) == ["listing"] and (tmp_path / "stages" / "listing.json").is_file()


def test_in_process_stages_run_the_commands_of_the_other_cli_modules(tmp_path, monkeypatch, capsys):
    """`--jobs 1` parses and runs each stage in this process, although `stepgraph regenerate` loads only its own CLI
    module: here `train`, on a store that does not exist, fails as `stepgraph train` would."""
    from stepgraph.training import regenerate

    missing = tmp_path / "missing.sqlite"
    monkeypatch.setattr(regenerate, "stages", lambda out, sizes: [("policy", ["train", "--store", str(missing), "--out", str(out / "p")])])
    assert main(["regenerate", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "regenerate: policy: stepgraph train" in err
    [error] = [line for line in err.splitlines() if line.startswith("stepgraph: error:")]
    assert "missing.sqlite" in error
