# The trainer runtime: the image of a DreamTrainJob's pods (its spec.image).
#
#   docker build -f images/runtime.Dockerfile -t ghcr.io/dream-trainer/runtime:0.1.0 .
#
# torch comes from the CUDA base image and stays as it is: the install below is constrained to
# the torch already there, so a dependency can never swap it for a CPU or another CUDA build.
# Override BASE_IMAGE for another CUDA/torch pair (torch must be >= 2.11).

ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime runtime
COPY operator operator
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="dream-trainer" \
      org.opencontainers.image.description="Dream Trainer runtime: distributed PyTorch training (FSDP2, TP, CP, async checkpoints)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /tmp/wheels
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/constraints.txt \
    && set -- /tmp/wheels/dream_trainer-*.whl \
    && python -m pip install --no-cache-dir --constraint /tmp/constraints.txt "$1[s3,metrics,wandb]" \
    && rm -rf /tmp/wheels /tmp/constraints.txt \
    && python -c "import dream_trainer.trainer, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
RUN groupadd --gid 65532 trainer \
    && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/trainer --shell /bin/bash trainer \
    && mkdir -p /workspace \
    && chown 65532:65532 /workspace
WORKDIR /workspace
COPY --chown=65532:65532 examples/ /workspace/examples/
USER 65532:65532
ENV HOME=/home/trainer
# The progress server the operator polls (status.progress); the rendezvous port is the job's.
EXPOSE 8090
CMD ["dream-trainer", "--help"]
