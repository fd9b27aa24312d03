# The DreamTrainJob operator: `dream-operator run`, without torch.
#
#   docker build -f images/operator.Dockerfile -t ghcr.io/dream-trainer/operator:0.1.0 .
#
# The package's base dependencies are the trainer runtime's (torch, numpy, ...). The operator
# needs none of them: it imports only dream_operator and the torch-free dream_trainer.contract.
# So the package goes in with --no-deps, and the `operator` extra's requirements, read from
# pyproject.toml (the one list to maintain), go in on their own. The build fails if torch
# arrives anyway.

ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first: this layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; extras = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; print('\n'.join(extras['operator']))" > /tmp/requirements-operator.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements-operator.txt
COPY runtime runtime
COPY operator operator
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/python -c "import importlib.util, sys; sys.exit('torch is in the operator image' if importlib.util.find_spec('torch') else 0)" \
    && /opt/venv/bin/python -c "import dream_operator.handlers, dream_operator.cli" \
    && /opt/venv/bin/dream-operator run --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="dream-operator" \
      org.opencontainers.image.description="The DreamTrainJob Kubernetes operator (kopf)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
# The distroless "nonroot" ids, the ones the Helm chart's securityContext uses.
RUN groupadd --system --gid 65532 nonroot \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin nonroot
USER 65532:65532
WORKDIR /tmp
# Prometheus /metrics and kopf's /healthz (the chart's defaults).
EXPOSE 9090 8080
ENTRYPOINT ["dream-operator", "run"]
