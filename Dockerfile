# syntax=docker/dockerfile:1
#
# raygate's two images, built from the repository root:
#
#   docker build --target gateway -t raygate/raygate:0.1.0 .         # raygate serve
#   docker build --target kernel  -t raygate/raygate-kernel:0.1.0 .  # Ray nodes, kernel pods
#
# The gateway runs `raygate serve` (settings from RAYGATE_* variables). The kernel image is
# what kernels run in: the Ray head and workers of a RayCluster (kernel actors import
# raygate there) and the kubernetes launcher's kernel pods (its bootstrap). Both carry the
# same raygate wheel and the same Ray and Python versions, which a Ray cluster requires.
# Versions are pinned: Python packages by deploy/constraints.txt (every pip below uses it;
# regenerate it with deploy/constraints.py), base images by tag; pin them by digest for
# production, e.g. --build-arg PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:<digest>.

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311

# -- build the wheel ---------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/deploy/constraints.txt
WORKDIR /src
COPY deploy/constraints.txt deploy/constraints.txt
COPY pyproject.toml README.md ./
COPY raygate raygate
COPY actors actors
COPY launchers launchers
# PIP_CONSTRAINT also pins the isolated build environment's setuptools
RUN pip wheel --no-deps --constraint deploy/constraints.txt --wheel-dir /wheels .

# -- the gateway's virtual environment ---------------------------------------------------
FROM ${PYTHON_IMAGE} AS gateway-venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/constraints.txt /tmp/constraints.txt
COPY --from=wheel /wheels /tmp/wheels
RUN python -m venv /opt/venv \
 && wheel="$(ls /tmp/wheels/raygate-*.whl)" \
 && /opt/venv/bin/pip install --constraint /tmp/constraints.txt "${wheel}[kubernetes]"

# -- kernel image: Ray + raygate + ipykernel ---------------------------------------------
FROM ${RAY_IMAGE} AS kernel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
USER root
# the kernel pod template's working directory, owned by its user (1000:100)
RUN mkdir -p /home/jovyan && chown 1000:100 /home/jovyan
USER 1000:100
COPY --chown=1000:100 deploy/constraints.txt /tmp/constraints.txt
COPY --chown=1000:100 --from=wheel /wheels /tmp/wheels
RUN pip install --constraint /tmp/constraints.txt /tmp/wheels/raygate-*.whl \
 && rm -rf /tmp/wheels /tmp/constraints.txt
WORKDIR /home/ray

# -- gateway image (the default target) --------------------------------------------------
FROM ${PYTHON_IMAGE} AS gateway
RUN groupadd --gid 10001 raygate \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/raygate \
        --shell /usr/sbin/nologin raygate
COPY --from=gateway-venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/raygate \
    RAYGATE_IP=0.0.0.0 \
    RAYGATE_PORT=8888
USER 10001:10001
WORKDIR /home/raygate
EXPOSE 8888
ENTRYPOINT ["raygate", "serve"]
