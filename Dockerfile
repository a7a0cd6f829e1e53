# netdp: device plugin daemon + ehost-device CNI shim.
# Build: podman/docker build -t netdp .   Run: see daemonset/.

FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY deviceplugin ./deviceplugin
# A venv keeps the runtime stage a plain copy; no compiler is needed (all wheels).
RUN python3 -m venv /opt/netdp \
 && /opt/netdp/bin/pip install --no-compile . \
 && /opt/netdp/bin/python -m compileall -q /opt/netdp/lib

FROM python:3.12-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="netdp" \
      org.opencontainers.image.description="Kubernetes device plugin and CNI plugin for PCI network devices" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/netdp /opt/netdp
ENV PATH=/opt/netdp/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Root is required, not chosen: kubelet sockets under /var/lib/kubelet, netlink and
# network-namespace moves for the CNI all need it (see docs/operations.md).
USER 0:0
ENTRYPOINT ["netdp"]
CMD ["run"]
