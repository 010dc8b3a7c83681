# Harmonia's workbench image: JupyterLab plus the `harmonia`, `dvc` and `papermill` commands.
# CPU by default; `--build-arg TORCH_VARIANT=cu128` (docker-compose.nvidia.yml does this)
# installs the CUDA build of the same torch version. Models, datasets, artifacts and caches
# live on volumes (docker-compose.yml), never in the image.
ARG BASE_IMAGE=python:3.11.7-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/home/harmonia/.cache/huggingface \
    HARMONIA_ROOT=/workbench \
    JUPYTER_PORT=8888

# 1. System packages: audio I/O, git for DVC, tini as PID 1, g++ and ninja for Harmonia's own
#    CPU products (compiled on first use into ~/.cache/harmonia/kernels).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 git tini g++ ninja-build \
 && rm -rf /var/lib/apt/lists/*

# 2. A non-root user with uid 1000 (the jupyter/docker-stacks convention).
RUN useradd --uid 1000 --create-home --shell /bin/bash harmonia \
 && mkdir -p /workbench /home/harmonia/.cache/huggingface \
 && chown -R harmonia:harmonia /workbench /home/harmonia

# 3. Python packages from the lock: torch first, from PyTorch's index for the chosen variant,
#    then everything else pinned in requirements.lock (torch is already satisfied).
COPY requirements.lock /opt/harmonia/requirements.lock
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
 && pip install -r /opt/harmonia/requirements.lock

# 4. Harmonia itself, its Jupyter kernel, and the scripts the container runs.
COPY pyproject.toml README.md /opt/harmonia/
COPY harmonia /opt/harmonia/harmonia
ENV HARMONIA_KERNEL_DIR=/opt/harmonia/kernels
RUN pip install --no-deps /opt/harmonia \
 && python -m ipykernel install --sys-prefix --name harmonia --display-name "Harmonia" \
 && python -c "from harmonia.kernels import build; print(build() or 'built Harmonia kernels')"
COPY docker/entrypoint.sh /usr/local/bin/harmonia-entrypoint
COPY docker/healthcheck.py /usr/local/bin/harmonia-healthcheck
RUN chmod 0755 /usr/local/bin/harmonia-entrypoint /usr/local/bin/harmonia-healthcheck

USER harmonia
WORKDIR /workbench
EXPOSE 8888
HEALTHCHECK --interval=30s --timeout=5s --start-period=40s --retries=3 CMD ["harmonia-healthcheck"]
ENTRYPOINT ["tini", "--", "harmonia-entrypoint"]
CMD ["lab"]
