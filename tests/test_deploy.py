"""The deployment files: the image's entry command serves, and the compose file is valid for a real compose tool."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from stepgraph.training.spec import load_spec

from stepgraph.testbed.vllm_serving import free_port

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "examples" / "deploy"


def _instruction(name: str) -> list[str]:
    """The JSON (exec) form of one Dockerfile instruction."""
    match = re.search(rf"^{name} (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, f"the Dockerfile has no {name} in exec form"
    return json.loads(match.group(1))




def test_the_image_runs_as_a_non_root_user_from_a_multi_stage_build():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) == 2 and "COPY --from=build" in text
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    # The CPU torch pin is the CPU variant's alone.
    cpu_branch = text[text.index('if [ "$VARIANT" = "cpu" ]'):text.index("else")]
    assert "constraints-cpu.txt" in cpu_branch and "constraints-cpu.txt" not in text[text.index("else"):]


@pytest.mark.integration
def test_the_images_entry_command_serves_the_shipped_models(tmp_path):
    """ENTRYPOINT + CMD as the container runs them, bound to 127.0.0.1 on a free port instead of 0.0.0.0:8000."""
    command = _instruction("ENTRYPOINT") + _instruction("CMD")
    port = free_port()
    command = [{"0.0.0.0": "127.0.0.1", "8000": str(port)}.get(arg, arg) for arg in command]
    executable = shutil.which(command[0], path=str(Path(sys.executable).parent))
    assert executable, "the entry point is not an installed console script"
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen([executable, *command[1:]], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline, body = time.time() + 120, None
        while time.time() < deadline and body is None:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as response:
                    body = json.load(response)
            except OSError:
                time.sleep(0.5)
        assert body is not None and body["data"][0]["id"] == "stepgraph"
        # The image's health check, run as Docker would run it (against the port the test bound).
        check = re.search(r'CMD \["python", "-c", "(.*)"\]', (ROOT / "Dockerfile").read_text()).group(1)
        subprocess.run([sys.executable, "-c", check.replace("8000", str(port))], check=True, timeout=10)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_compose_files_run_spec_loads_and_points_the_store_at_postgres():
    spec = load_spec(DEPLOY / "spec.toml")
    assert str(spec.paths.store).startswith("postgresql://") and ":" not in str(spec.paths.store).split("@")[0][13:]
    assert [t.base_url for t in spec.tiers] == ["http://draft:8000/v1", "http://target:8000/v1"]


def test_compose_file_is_valid_for_docker_compose(tmp_path):
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("STEPGRAPH_REQUIRE_POSTGRES") == "1":  # CI installs both from Debian
            pytest.fail("docker-compose is not installed (apt-get install docker-compose)")
        pytest.skip("docker-compose is not installed")
    env = {**os.environ, "STEPGRAPH_API_KEY": "k", "POSTGRES_PASSWORD": "p"}
    done = subprocess.run([tool, "-f", str(DEPLOY / "compose.yaml"), "config"], check=False, capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    for service in ("draft", "target", "postgres", "router-1", "router-2", "balancer", "collector"):
        assert f"\n  {service}:\n" in done.stdout
    # Secrets are required from the environment, never written in the file.
    missing = subprocess.run([tool, "-f", str(DEPLOY / "compose.yaml"), "config"], check=False, capture_output=True, text=True,
                             env={k: v for k, v in env.items() if k != "POSTGRES_PASSWORD"}, cwd=tmp_path, timeout=60)
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr
    # The routers share their conversations in PostgreSQL (no password in the URL: PGPASSWORD) and are
    # healthy only once /ready says so.
    for service in ("router-1", "router-2"):
        block = re.split(r"\n {0,2}(?=\S)", done.stdout.split(f"\n  {service}:\n")[1])[0]  # up to the next service
        assert "--checkpointer" in block and "postgresql://stepgraph@postgres:5432/stepgraph" in block
        assert "8000/ready" in block
    # Every router replica is behind the balancer.
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert all(f"server {name}:8000" in nginx for name in ("router-1", "router-2"))
