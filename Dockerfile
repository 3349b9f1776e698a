# syntax=docker/dockerfile:1
# finsent, CPU image: multi-stage (build tools stay in the first stage), non-root, model baked in.
#   docker build -t finsent .
#   docker run --rm -p 9108:9108 -e FINSENT_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 finsent run
# The GPU variant is deploy/Dockerfile.gpu.
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/finsent
WORKDIR /src
COPY pyproject.toml README.md ./
COPY finsent ./finsent
COPY ingest ./ingest
COPY inference ./inference
COPY alerts ./alerts
# `pip install .` (not -e): the package, and with it the model in inference/models/default/, is copied into
# the virtual environment. The build fails here if the model is missing, rather than at start-up.
RUN /opt/finsent/bin/pip install . \
 && /opt/finsent/bin/python -c "import pathlib, inference; d = pathlib.Path(inference.__file__).parent / 'models' / 'default'; assert (d / 'finsent_config.json').is_file() and any(d.glob('*.onnx')), f'no model in {d}'" \
 && find /opt/finsent -name '__pycache__' -prune -exec rm -rf {} + \
 && rm -rf /opt/finsent/lib/python*/site-packages/pip /opt/finsent/lib/python*/site-packages/setuptools

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="finsent" \
      org.opencontainers.image.description="Financial sentiment monitor: Kafka in, ONNX labels, spike alerts, Prometheus and Elasticsearch out" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 finsent \
 && useradd --system --uid 10001 --gid finsent --home-dir /home/finsent --create-home --shell /usr/sbin/nologin finsent
COPY --from=build /opt/finsent /opt/finsent
# ORT_DISABLE_TELEMETRY: onnxruntime's usage events to Microsoft stay off (finsent sets it too).
# TOKENIZERS_PARALLELISM=false: the tokenizer's thread pool would take every core of the node, not the
# pod's CPU share (ONNX Runtime's threads follow the CPU request: FINSENT_MODEL__THREADS in the manifests).
ENV PATH=/opt/finsent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ORT_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false \
    FINSENT_METRICS__HOST=0.0.0.0 \
    FINSENT_METRICS__PORT=9108
USER 10001:10001
WORKDIR /home/finsent
EXPOSE 9108
# The check asks /healthz on FINSENT_METRICS__PORT (a port set in a YAML file instead is not seen here);
# FINSENT_METRICS__ENABLED=false turns /healthz off too, and the container then reads as unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('FINSENT_METRICS__PORT') or '9108'), timeout=3)"]
ENTRYPOINT ["finsent"]
CMD ["run"]
