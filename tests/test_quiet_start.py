"""A fast, quiet start: bad input is refused before anything heavy loads, and a normal run logs
no library notices."""

import subprocess
import sys
import threading

from stepgraph import answers


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)


def test_empty_question_is_refused_before_the_graph_and_models_load():
    result = run_python(
        "import sys\n"
        "from stepgraph.cli import main\n"
        "code = main(['solve', '   '])\n"
        "heavy = sorted(m for m in ('torch', 'langgraph', 'transformers', 'math_verify', 'stepgraph.training', 'stepgraph.models.local') if m in sys.modules)\n"
        "print(code, heavy)\n"
    )
    assert result.stdout.strip() == "2 []", result.stderr
    assert "The question is empty" in result.stderr


def test_an_offline_command_imports_only_its_own_cli_module():
    """`stepgraph regenerate` starts its stages without loading torch or the trainer (the other offline commands' modules)."""
    result = run_python(
        "import sys, contextlib, io\n"
        "from stepgraph.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    code = main(['regenerate', '--out', 'unused', '--list'])\n"
        "print(code, sorted(m for m in ('torch', 'stepgraph.cli.training', 'stepgraph.cli.radar', 'stepgraph.cli.studies') if m in sys.modules))\n"
    )
    assert result.stdout.strip() == "0 []", result.stderr


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`stepgraph regenerate --list | head -1`: here the pipe is closed before the JSON is written."""
    process = subprocess.Popen([sys.executable, "-m", "stepgraph", "regenerate", "--out", "unused", "--list"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # type: ignore[union-attr]
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1 and err == ""


def test_the_help_still_lists_every_command():
    from stepgraph.cli import OFFLINE_COMMANDS, RUNTIME_COMMANDS, build_parser

    help_text = build_parser().format_help()
    assert all(command in help_text for commands in OFFLINE_COMMANDS.values() for command in commands)
    assert all(command in help_text for command in RUNTIME_COMMANDS)


def test_judging_off_the_main_thread_logs_no_timeout_notice():
    """math-verify warns once per process when called without its SIGALRM timeout (any non-main thread)."""
    result = run_python(
        "import logging, concurrent.futures as cf\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from stepgraph.answers import is_correct\n"
        "with cf.ThreadPoolExecutor(1) as pool:\n"
        "    print(pool.submit(is_correct, '1/2', '0.5').result(), pool.submit(is_correct, '41', '42').result())\n"
    )
    assert result.stdout.strip() == "True False"
    assert result.stderr == ""


def test_a_comparison_that_overruns_the_timeout_counts_as_wrong(monkeypatch):
    assert answers.is_correct("42", "42")
    release = threading.Event()
    monkeypatch.setattr(answers, "TIMEOUT_SECONDS", 0.2)
    import math_verify

    def stuck_verify(*args, **kwargs):
        release.wait(5)
        return True

    monkeypatch.setattr(math_verify, "verify", stuck_verify)
    try:
        assert not answers.is_correct("42", "42")
    finally:
        release.set()
