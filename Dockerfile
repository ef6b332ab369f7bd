# syntax=docker/dockerfile:1
# streamvsr: the real-time server (`streamvsr serve`) on an NVIDIA GPU.
#
# Base image: python:3.11-slim (Debian bookworm), not nvidia/cuda. The pinned torch 2.14.1 wheel
# from PyPI is the CUDA 13.0 build and carries its own CUDA runtime, cuDNN, cuBLAS and NCCL (the
# nvidia-* wheels it depends on); the only thing it needs from the host is the NVIDIA driver, which
# the NVIDIA container toolkit mounts into the container (`gpus: all` / the compose file's device
# reservation). An nvidia/cuda:13.0.x-runtime base would ship a second copy of the same libraries
# (~2 GB) that torch does not use. Python 3.11 matches the pinned av 18.1 / torch wheels.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video

# A non-root user that owns the model caches (one volume at /cache) and nothing else.
RUN groupadd --system --gid 10001 streamvsr \
    && useradd --system --uid 10001 --gid streamvsr --home-dir /home/streamvsr --create-home \
        --shell /usr/sbin/nologin streamvsr \
    && mkdir -p /cache/huggingface /cache/torch \
    && chown -R streamvsr:streamvsr /cache

WORKDIR /app

# Dependencies first (their own layer: rebuilt only when pyproject.toml or constraints.txt change).
# The dependency list is read from pyproject.toml and installed with the project's pins.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the code, installed as a regular package (not editable): the page (web/) and the default
# settings (configs/default.yaml) ship inside it as package data.
COPY README.md ./
COPY streamvsr ./streamvsr
COPY engine ./engine
COPY server ./server
COPY bench ./bench
COPY configs ./configs
COPY web ./web
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf /app/build

USER 10001:10001
VOLUME ["/cache"]
EXPOSE 8080/tcp

# /healthz: the process answers (the engine may still be loading; /readyz says when it is ready).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]

ENTRYPOINT ["streamvsr", "serve", "--host", "0.0.0.0"]
CMD []
