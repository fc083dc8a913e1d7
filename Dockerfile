# stepgraph's OpenAI-compatible router server (`stepgraph serve`), and the same image for collectors.
#
#   docker build -t stepgraph .                          # CUDA torch: tiers as in-process vLLM engines (kind = "vllm")
#   docker build -t stepgraph:cpu --build-arg VARIANT=cpu .   # CPU torch: the shipped testbed, or tiers behind servers
#
# The router holds no state of its own (traces and conversations go to PostgreSQL), so replicas scale
# behind any load balancer; see README "Deploying" and examples/deploy/compose.yaml.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=gpu
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints-cpu.txt ./
COPY stepgraph stepgraph
COPY training training
# The CPU variant pins torch to the CPU wheel (from PyTorch's CPU index); the default takes PyPI's CUDA build.
RUN python -m venv /opt/stepgraph \
 && if [ "$VARIANT" = "cpu" ]; then \
      /opt/stepgraph/bin/pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -c constraints-cpu.txt ".[serve,openai,postgres,mcp]"; \
    else \
      /opt/stepgraph/bin/pip install --no-cache-dir ".[serve,openai,postgres,mcp,vllm]"; \
    fi

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/stepgraph /opt/stepgraph
RUN useradd --create-home --uid 10001 stepgraph
USER stepgraph
WORKDIR /home/stepgraph
ENV PATH=/opt/stepgraph/bin:$PATH PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
ENTRYPOINT ["stepgraph"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
