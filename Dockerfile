# syntax=docker/dockerfile:1
#
# circuitserve images. One file, two flavours on the same base (ubuntu 24.04, Python 3.12) that differ
# only in their default provider and in one install extra:
#
#   docker build -t circuitserve:cpu .                           # the serve deps
#   docker build -t circuitserve:cuda --build-arg FLAVOR=cuda .  # + the gpu extra: CUDA 13, cuDNN 9
#
# The serve deps include onnxruntime-gpu, which runs on CPU too. The CUDA flavour adds the `gpu`
# extra: NVIDIA's CUDA 13 and cuDNN 9 runtime wheels from PyPI, which the server loads with
# onnxruntime.preload_dlls() (service/runtime.py), so no nvidia/cuda base image is needed: the host
# brings the driver (580+) through the NVIDIA Container Toolkit. Both install with the command CI
# runs (scripts/install.sh). Sizes: deploy/README.md.
#
# Bundles, three ways (BUNDLE_SOURCE, BuildKit builds only the stage chosen):
#   train    (default) a throwaway stage with the `train` extra trains and exports the digits bundle;
#            only the bundle directory reaches the runtime image, never torch
#   context  copy ./bundles/ from the build context (export them first, see deploy/README.md)
#   none     no bundle baked in: mount one at /bundles at run time
# The image serves what CIRCUITSERVE_BUNDLES lists (default: /bundles/digits).

ARG FLAVOR=cpu
ARG BUNDLE_SOURCE=train

# ---------------------------------------------------------------------------------------------------
# Base images: Python 3.12 from Ubuntu 24.04 in both flavours. INSTALL_EXTRA is the extra the
# runtime venv gets (scripts/install.sh).
FROM ubuntu:24.04 AS base-cpu
ENV CIRCUITSERVE_PROVIDER=cpu \
    INSTALL_EXTRA=""

FROM ubuntu:24.04 AS base-cuda
ENV CIRCUITSERVE_PROVIDER=auto \
    INSTALL_EXTRA=gpu

# hadolint ignore=DL3006
FROM base-${FLAVOR} AS python
# Distribution package versions follow the pinned base image tag; pinning them too breaks on every
# Ubuntu point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---------------------------------------------------------------------------------------------------
# Build the runtime virtual environment: dependency layer first, code layer second.
FROM python AS build
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/
# Dependency layer: the real project metadata over empty packages, so this layer is rebuilt only
# when pyproject.toml (or README.md, which it names) changes.
RUN mkdir -p model export service \
    && touch model/__init__.py export/__init__.py service/__init__.py circuitserve.py \
    && scripts/install.sh "${INSTALL_EXTRA}"
# Code layer: the same command again; the dependencies are already satisfied, so only circuitserve
# itself is rebuilt (pip always reinstalls a local directory). bench/ stays out: the server never
# needs it, and the command imports it only inside `circuitserve bench`.
COPY model/ model/
COPY export/ export/
COPY service/ service/
COPY circuitserve.py ./
RUN scripts/install.sh "${INSTALL_EXTRA}" \
    && circuitserve --help > /dev/null \
    && if python -c "import torch" 2>/dev/null; then echo "torch must not be in the runtime image" >&2; exit 1; fi \
    && if python -c "import bench" 2>/dev/null; then echo "bench must not be in the runtime image" >&2; exit 1; fi

# ---------------------------------------------------------------------------------------------------
# Bundle sources.
FROM python AS bundles-train
# torch from PyPI is its CUDA build (several GB, unused here: training digits takes seconds on CPU).
# Pass --build-arg PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index> to get the small CPU build.
ARG PIP_EXTRA_INDEX_URL=""
ARG TRAIN_ARGS=""
ARG EXPORT_ARGS=""
RUN python3 -m venv /opt/train
ENV PATH=/opt/train/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/install.sh scripts/
COPY model/ model/
COPY export/ export/
COPY service/ service/
COPY circuitserve.py ./
RUN scripts/install.sh train
# TRAIN_ARGS and EXPORT_ARGS are extra CLI flags, word-split on purpose.
RUN circuitserve train --dataset digits --out /tmp/runs/digits ${TRAIN_ARGS} \
    && circuitserve export /tmp/runs/digits --out /bundles/digits ${EXPORT_ARGS} \
    && test -f /bundles/digits/manifest.json

FROM python AS bundles-context
COPY bundles/ /bundles/

FROM python AS bundles-none
RUN mkdir -p /bundles

# hadolint ignore=DL3006
FROM bundles-${BUNDLE_SOURCE} AS bundles

# The bundles alone, for filling a volume (deploy/k8s/jobs/bundle-loader.yaml):
#   docker build --target bundle-image -t registry.example.com/circuitserve-bundles:digits .
FROM python AS bundle-image
COPY --from=bundles /bundles /bundles

# ---------------------------------------------------------------------------------------------------
# Runtime: the venv (no torch, no compiler, no source tree), the bundles, a non-root user.
FROM python AS runtime
LABEL org.opencontainers.image.title="circuitserve" \
      org.opencontainers.image.description="Neural Attentive Circuit server, Open Inference Protocol (KServe v2) over HTTP" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 circuitserve \
    && useradd --system --uid 10001 --gid circuitserve --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin circuitserve
COPY --from=build /opt/venv /opt/venv
COPY --from=bundles /bundles /bundles
COPY scripts/healthcheck.py /opt/circuitserve/healthcheck.py
# Every setting can be overridden at run time: docker run -e CIRCUITSERVE_PORT=9000 ...
ENV PATH=/opt/venv/bin:$PATH \
    CIRCUITSERVE_HOST=0.0.0.0 \
    CIRCUITSERVE_PORT=8000 \
    CIRCUITSERVE_BUNDLES='["/bundles/digits"]' \
    CIRCUITSERVE_DRAIN_TIMEOUT_S=20
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/opt/circuitserve/healthcheck.py"]
# SIGTERM starts the server's drain (up to CIRCUITSERVE_DRAIN_TIMEOUT_S): give `docker stop` more
# time than that, e.g. `docker stop -t 30`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["circuitserve"]
CMD ["serve"]
