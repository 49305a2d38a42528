# geolabel with its pinned environment: the TFX component image of
# `geolabel pipeline compile --target kubeflow --image IMAGE` and Beam's SDK container on
# Dataflow (`--sdk_container_image=IMAGE`, added to the compiled spec's Beam flags).
#
#   docker build -t REGISTRY/geolabel:TAG .
#   docker run --rm --entrypoint geolabel REGISTRY/geolabel:TAG info   # the entrypoint is Beam's boot
#
# Debian 12 + CPython 3.11, as the verified environment (requirements/); the install is the
# Makefile's (`make deps`: the lock, then the TFX pieces with --no-deps; `make setup`: geolabel).
# Beam's SDK launcher is copied from the official image of the same Beam version, as Beam
# documents for custom containers; it runs the worker in this image's Python (no extra venv).

ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION} AS beam

FROM python:3.11.7-bookworm

COPY --from=beam /opt/apache/beam /opt/apache/beam

ENV VIRTUAL_ENV=/opt/geolabel/.venv \
    PATH=/opt/geolabel/.venv/bin:$PATH \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/geolabel

# Dependencies first: this layer is rebuilt only when a requirements file changes.
COPY Makefile ./
COPY requirements/ requirements/
RUN make deps PYTHON=/usr/local/bin/python3

COPY setup.cfg pyproject.toml README.md ./
COPY geolabel/ geolabel/
COPY cli/ cli/
COPY pipelines/ pipelines/
COPY serving/ serving/
RUN make setup && geolabel info

ENTRYPOINT ["/opt/apache/beam/boot"]
