# syntax=docker/dockerfile:1.7
#
# One image for the operator (its default command) and the runner (`lipsync run ...`, which the
# operator's Jobs start). No model weights are baked in: jobs name them (spec.model.weights).
#
#   GPU (default):  docker build -t lipsync:0.1.0 .
#   CPU only:       docker build --build-arg VARIANT=cpu -t lipsync:0.1.0-cpu .
#
# Stages: os-cuda | os-cpu (the OS layer a VARIANT picks) -> base (Python 3.11 + ffmpeg, the
# non-root user) -> builder (torch for the VARIANT + the project, in /opt/venv) -> runtime (the
# final image). Model-specific images build FROM runtime.

ARG VARIANT=cuda
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04
ARG CPU_IMAGE=ubuntu:22.04

FROM ${CUDA_IMAGE} AS os-cuda
FROM ${CPU_IMAGE} AS os-cpu

# ---------------------------------------------------------------------------------------- base
FROM os-${VARIANT} AS base
ARG PYTHON=python3.11
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# Ubuntu 22.04 ships Python 3.10; 3.11 comes from the deadsnakes PPA (the key is fetched by
# add-apt-repository, which is removed again afterwards).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gnupg software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      ${PYTHON} ${PYTHON}-venv ffmpeg tini \
 && apt-get purge -y --auto-remove software-properties-common gnupg \
 && rm -rf /var/lib/apt/lists/* \
 && ${PYTHON} -m venv ${VIRTUAL_ENV} \
 && ffmpeg -hide_banner -version | head -n1 \
 && python --version
# A fixed numeric UID/GID: Kubernetes' runAsNonRoot can only verify a numeric USER, and the Helm
# chart's securityContext uses the same numbers.
RUN groupadd --system --gid 10001 lipsync \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/lipsync --create-home \
      --shell /usr/sbin/nologin lipsync

# ------------------------------------------------------------------------------------- builder
FROM base AS builder
ARG VARIANT
ARG TORCH_VERSION=2.13.0
# The PyTorch wheel index for the VARIANT: CUDA 12.8 builds, or the (much smaller) CPU builds.
ARG TORCH_INDEX_CUDA=https://download.pytorch.org/whl/cu128
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
RUN case "${VARIANT}" in \
      cuda) index="${TORCH_INDEX_CUDA}" ;; \
      cpu) index="${TORCH_INDEX_CPU}" ;; \
      *) echo "VARIANT must be cuda or cpu, not ${VARIANT}" >&2; exit 1 ;; \
    esac \
 && pip install --upgrade pip setuptools wheel \
 && pip install --index-url "${index}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runner/ runner/
COPY operator/ operator/
# The [wav2lip] extra's torch is already satisfied by the VARIANT's build, so the project does not
# pull another one. (Without the extra, the project and operator need no torch at all.)
RUN pip install ".[operator,wav2lip]" \
 && python -c "import torch, lipsync, lipsync_operator; print('torch', torch.__version__)" \
 && command -v lipsync lipsync-operator

# ---------------------------------------------------------------------------------- latentsync
# The runner plus LatentSync (bytedance/LatentSync, pinned) in its own Python 3.10 env, for
# `model: latentsync`. Job weights (latentsync_unet.pt, whisper/tiny.pt) come from
# spec.model.weights; what every job needs and LatentSync would otherwise download at run time
# (the SD VAE, InsightFace's detector) is fetched here, at build time.
#   docker build --target latentsync -t lipsync:0.1.0-latentsync .
FROM base AS latentsync
ARG LATENTSYNC_COMMIT=a229c3948406bc2cf6eaf4873e662e70c6a04746
ARG VAE_REVISION=main
COPY --from=builder /opt/venv /opt/venv
ENV LATENTSYNC_HOME=/opt/latentsync \
    LATENTSYNC_PYTHON=/opt/latentsync/.venv/bin/python \
    HF_HOME=/opt/latentsync/hf \
    HOME=/home/lipsync
RUN apt-get update \
 && apt-get install -y --no-install-recommends git build-essential python3.10 python3.10-venv python3.10-dev \
      libgl1 libglib2.0-0 \
 && git init -q ${LATENTSYNC_HOME} \
 && git -C ${LATENTSYNC_HOME} fetch -q --depth 1 https://github.com/bytedance/LatentSync.git ${LATENTSYNC_COMMIT} \
 && git -C ${LATENTSYNC_HOME} checkout -q FETCH_HEAD \
 && rm -rf ${LATENTSYNC_HOME}/.git ${LATENTSYNC_HOME}/assets \
 && python3.10 -m venv ${LATENTSYNC_HOME}/.venv \
 && ${LATENTSYNC_PYTHON} -m pip install --upgrade pip \
 && ${LATENTSYNC_PYTHON} -m pip install -r ${LATENTSYNC_HOME}/requirements.txt \
 && ${LATENTSYNC_HOME}/.venv/bin/huggingface-cli download stabilityai/sd-vae-ft-mse --revision ${VAE_REVISION} \
 && cd ${LATENTSYNC_HOME} \
 && ${LATENTSYNC_PYTHON} -c "from insightface.app import FaceAnalysis; FaceAnalysis(root='checkpoints/auxiliary', allowed_modules=['detection', 'landmark_2d_106'], providers=['CPUExecutionProvider'])" \
 && ${LATENTSYNC_PYTHON} -c "import torch, diffusers, decord, insightface, DeepCache; print('latentsync env', torch.__version__)" \
 && apt-get purge -y --auto-remove git build-essential python3.10-dev \
 && rm -rf /var/lib/apt/lists/* /root/.cache \
 && chmod -R a+rX ${LATENTSYNC_HOME}
WORKDIR /home/lipsync
USER 10001:10001
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["lipsync-operator"]

# ------------------------------------------------------------------------------------- runtime
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="lipsync-operator" \
      org.opencontainers.image.description="LipSyncJob operator and lip-sync runner (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/venv /opt/venv
ENV LIPSYNC_VARIANT=${VARIANT} \
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=2147483648:glibc.malloc.trim_threshold=4294967296 \
    HOME=/home/lipsync
WORKDIR /home/lipsync
USER 10001:10001
# kopf's health endpoint and the operator's metrics (LIPSYNC_METRICS_PORT)
EXPOSE 8080 9090
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["lipsync-operator"]
