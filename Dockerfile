# trainguard exporter and remediator image (one image, two commands).
#
#   docker build -t trainguard:local .                      # with CPU torch: repair works
#   docker build -t trainguard:local --build-arg WITH_TORCH=0 .   # ~1 GB smaller
#
# WITH_TORCH=1 (default) installs the `torch` extra from PyTorch's CPU wheel index: only
# `checkpoint repair` needs torch (to rewrite RNG files); a CUDA build would add gigabytes
# for nothing.  Without it the remediator still resumes from valid checkpoints but cannot
# repair a repairable one (it skips to the next usable checkpoint and says so).
FROM python:3.11-slim

ARG WITH_TORCH=1
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainguard ./trainguard
COPY exporter ./exporter
COPY remediator ./remediator
RUN if [ "$WITH_TORCH" = "1" ]; then \
        pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[torch]"; \
    else \
        pip install .; \
    fi \
    && rm -rf /src

# Not root by default.  docker-compose.yml runs both services as the user that owns the
# training processes (TRAINGUARD_USER), which is what lets them read and signal them.
RUN useradd --system --uid 10001 --no-create-home trainguard
USER 10001
WORKDIR /
ENTRYPOINT ["trainguard"]
CMD ["--help"]
