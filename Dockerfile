# certreload as a container: a sidecar beside PostgreSQL, or a probe.
#
# Build:  docker build -t certreload:0.1.0 .
#         docker build --build-arg UID=999 --build-arg GID=999 -t certreload:0.1.0 .
# The user defaults to uid 101 / gid 103: the postgres user of the Spilo image that the
# CYBERTEC and Zalando operators run (their pods use fsGroup 103), so the files certreload
# installs with --install-dir belong to the server's user.

# ---- build: a venv with pinned dependencies and certreload's wheel -------------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.lock ./
RUN python -m venv /opt/certreload \
 && /opt/certreload/bin/pip install --no-deps -r requirements.lock
COPY pyproject.toml README.md ./
COPY certreload ./certreload
RUN /opt/certreload/bin/pip install --no-deps . \
 && /opt/certreload/bin/python -m compileall -q /opt/certreload

# ---- run: the venv only; no compilers, no pip cache --------------------------------------
FROM python:3.11.11-slim-bookworm
ARG UID=101
ARG GID=103
RUN groupadd --system --gid "${GID}" postgres \
 && useradd --system --uid "${UID}" --gid "${GID}" --home-dir /nonexistent --shell /usr/sbin/nologin postgres
COPY --from=build /opt/certreload /opt/certreload
ENV PATH=/opt/certreload/bin:$PATH PYTHONUNBUFFERED=1
USER ${UID}:${GID}
EXPOSE 9814
# Liveness of the loop itself (not the certificate: that is --check's and the metrics' job).
# Needs --listen 127.0.0.1:9814 or 0.0.0.0:9814; without --listen it reports unhealthy.
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9814/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["certreload"]
CMD ["--help"]
