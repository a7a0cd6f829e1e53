# netdp: the device plugin daemon, `netdp install-cni` and the static ehost-device CNI plugin.
#
#   podman build -t netdp:0.1.0 .        (or docker build)
#   kubectl apply -k daemonset/          (see docs/operations.md)
#
# The build stage makes a self-contained venv, with the ehost-device binary that
# setup.py compiles (static, libc only) inside the package; the final stage only
# copies it, so no compiler, pip cache, setuptools or source tree reaches the image. Every
# Python package is pinned here; tests/test_deploy.py checks the pins against
# pyproject.toml's ranges and that hadolint finds nothing.

FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# A C compiler and a static libc for the ehost-device binary. Not pinned: the
# base image's Debian release fixes their versions, and the binary is checked below.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# Dependencies first: this layer stays cached while only our code changes.
# --no-deps + `pip check` makes the pin list complete or the build fails.
RUN python -m venv /opt/netdp \
 && /opt/netdp/bin/pip install --no-deps \
      annotated-types==0.7.0 \
      asyncinotify==4.4.4 \
      grpcio==1.85.3 \
      h11==0.16.0 \
      prometheus-client==0.26.0 \
      protobuf==7.36.2 \
      pydantic==2.13.4 \
      pydantic-core==2.46.4 \
      pyroute2==0.9.7 \
      pyudev==0.24.5 \
      pyyaml==6.0.3 \
      setuptools==84.2.1 \
      structlog==26.1.0 \
      typing-extensions==4.15.0 \
      typing-inspection==0.4.2
COPY pyproject.toml setup.py README.md ./
COPY deviceplugin ./deviceplugin
# Build with the pinned setuptools (no isolated build env fetching another),
# check that the binary was built and installs, then drop the build tools from
# the venv that the final stage copies.
RUN /opt/netdp/bin/pip install --no-deps --no-build-isolation . \
 && /opt/netdp/bin/netdp install-cni --dest /tmp/cni-check \
 && rm -r /tmp/cni-check \
 && /opt/netdp/bin/pip check \
 && /opt/netdp/bin/pip uninstall --yes setuptools pip \
 && /opt/netdp/bin/python -m compileall -q /opt/netdp/lib \
 && /opt/netdp/bin/netdp --version

FROM python:3.12-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="netdp" \
      org.opencontainers.image.description="Kubernetes device plugin and ehost-device CNI plugin for PCI network devices (SR-IOV VFs, virtio NICs)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/operations.md"
COPY --from=build /opt/netdp /opt/netdp
ENV PATH=/opt/netdp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Root is required, not chosen: registering on the kubelet's root-owned sockets,
# netlink changes to host interfaces and moving NICs between network namespaces
# all need it. The DaemonSet drops every capability but the few it needs
# (docs/operations.md, "Privileges").
# hadolint ignore=DL3002
USER 0:0
ENTRYPOINT ["netdp"]
CMD ["run"]
