# certwatch: TLS certificate expiry monitor.
#
#   podman build --format docker -t localhost/certwatch .      # --format docker keeps HEALTHCHECK
#   docker build -t certwatch .
#
# Two stages on the same Debian base: the builder makes a virtualenv at /opt/certwatch
# with certwatch and its dependencies installed (not editable); the final image holds
# only Debian's python3, ca-certificates and that virtualenv. The venv's interpreter is
# a symlink to /usr/bin/python3, which is why both stages must use the same base image.
#
# Behind a TLS-intercepting proxy pip needs its CA. Mount it for the build only and name
# it with PIP_CERT; it never reaches the final image (the builder stage is discarded):
#   podman build --format docker -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro \
#       --build-arg PIP_CERT=/run/host-ca.crt -t localhost/certwatch .

# ---- builder ----------------------------------------------------------------------------
FROM debian:bookworm-slim AS builder

# Debian stable only changes a package for security fixes and its mirrors keep the latest
# version alone, so pinned versions would break the build at the next security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python3 -m venv /opt/certwatch

WORKDIR /src
COPY pyproject.toml README.md ./
COPY certwatch ./certwatch

# Unset by default. Only a path is passed; the certificate itself is bind-mounted.
ARG PIP_CERT
# pip compiles every module to .pyc at install time, so nothing needs writing at run time
# (the root filesystem is read-only). pip and setuptools are removed afterwards: the
# running image never installs anything.
RUN /opt/certwatch/bin/pip install --no-cache-dir ".[fast]" \
    && /opt/certwatch/bin/pip uninstall --yes pip setuptools \
    && /opt/certwatch/bin/certwatch --version

# ---- final image ------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: the system roots certwatch verifies chains against (system_trust).
# A fixed UID/GID so volume ownership and Kubernetes' runAsUser/fsGroup can name it.
# /var/lib/certwatch is the only place certwatch may write (state; see VOLUME below).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && groupadd --gid 10001 certwatch \
    && useradd --uid 10001 --gid 10001 --no-create-home --no-log-init \
        --home-dir /var/lib/certwatch --shell /usr/sbin/nologin certwatch \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/certwatch

COPY --from=builder /opt/certwatch /opt/certwatch
COPY deploy/container/certwatch.yaml /etc/certwatch/certwatch.yaml

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only; the .pyc files exist already.
ENV PATH=/opt/certwatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/certwatch
# The alert state (SQLite, alerts.state_dir's default) lives here. A volume keeps it
# across container replacements and keeps the image usable with --read-only.
VOLUME ["/var/lib/certwatch"]

# Late in the file, so a new version does not invalidate the layers above.
# VERSION must match pyproject.toml (a test checks); SOURCE is the repository's address.
ARG VERSION=0.1.0
ARG SOURCE=https://github.com/certwatch/certwatch
LABEL org.opencontainers.image.title="certwatch" \
      org.opencontainers.image.description="TLS certificate expiry monitor: probes endpoints (direct TLS and STARTTLS), judges the whole chain, exports Prometheus metrics." \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# /metrics, /healthz, /readyz, the JSON API and the status page.
EXPOSE 9795

# No curl in the image: Python asks. No proxy (a user's HTTP_PROXY must not catch a
# loopback request); urlopen raises on a refused connection and on any non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:9795/healthz', timeout=3)"]

# certwatch is PID 1 with no init: it installs handlers for SIGTERM and SIGINT (a PID 1
# without handlers would ignore them), finishes probes in flight (--grace, 10 s) and exits
# 0; it starts no child processes, so there are no zombies to reap.
ENTRYPOINT ["certwatch"]
CMD ["run", "-c", "/etc/certwatch/certwatch.yaml"]
