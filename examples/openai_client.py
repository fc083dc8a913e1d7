"""Talk to `stepgraph serve` with the official OpenAI client: one answer, then the same one streamed step by step.

Run: python examples/openai_client.py
It starts `stepgraph serve` on a free local port and stops it at the end. To use a server you
started yourself (`stepgraph serve --port 8000`), set STEPGRAPH_URL=http://127.0.0.1:8000 (and
STEPGRAPH_API_KEY if the server needs one).
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

from openai import OpenAI

QUESTION = "Anna has 12 coins. She gets 7 more. She gives away 5. Ben has three times as many coins as Anna. How many coins does Ben have?"


@contextmanager
def local_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "stepgraph", "serve", "--port", str(port), "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(360):  # loading the models takes a few seconds
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def main(url: str) -> None:
    client = OpenAI(base_url=url + "/v1", api_key=os.environ.get("STEPGRAPH_API_KEY", "none"))
    completion = client.chat.completions.create(model="stepgraph", messages=[{"role": "user", "content": QUESTION}], seed=0)
    routing = completion.model_extra["stepgraph"]  # the documented extension field
    print(completion.choices[0].message.content)
    print(f"answer: {routing['answer']}  (finish: {completion.choices[0].finish_reason}, "
          f"escalations: {routing['escalations']}, tokens: {completion.usage.completion_tokens}, "
          f"${routing['totals']['usd']:.6f})")
    print("streamed:")
    for chunk in client.chat.completions.create(model="stepgraph", messages=[{"role": "user", "content": QUESTION}],
                                                seed=0, stream=True):
        step = (chunk.model_extra.get("stepgraph") or {}).get("step")
        if step:
            print(f"  [tier {step['tier']}] {chunk.choices[0].delta.content.strip()}")


if __name__ == "__main__":
    if os.environ.get("STEPGRAPH_URL"):
        main(os.environ["STEPGRAPH_URL"])
    else:
        with local_server() as local_url:
            main(local_url)
