# certreload as a container: a sidecar beside PostgreSQL (deploy/kubernetes/), or a probe.
#
# Build:  docker build -t certreload:0.1.0 .
#         docker build --build-arg UID=26 --build-arg GID=26 -t certreload:0.1.0-uid26 .
#
# The user: uid 101 / gid 103 by default, the postgres user of the Spilo image that the
# Zalando operator and the CYBERTEC operator (CPO) run by default (the operators' charts list
# spilo_runasuser 101, spilo_runasgroup 103, spilo_fsgroup 103).  CYBERTEC's own
# cybertec-pg-container images (Rocky Linux, PGDG packages) run PostgreSQL as uid 26 / gid 26
# instead: build with UID=26 GID=26, or set runAsUser/runAsGroup in the pod (which overrides
# USER anyway).  The uid matters for install mode (--install-dir writes the key owned by the
# user certreload runs as, which must be the server's user); with the secret read in place
# (root:fsGroup 0640) any uid in the pod's fsGroup works.
#
# Python packages are pinned in requirements.lock (pip freeze of a clean venv with certreload;
# tests/test_deploy.py installs it into a clean venv and runs certreload --help from it).

# ---- build: certreload's wheel, and a venv with the pinned dependencies -------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements.lock ./
# Wheels only: nothing is compiled, so the build needs no compiler either.
RUN python -m venv /opt/certreload \
 && /opt/certreload/bin/pip install --no-deps --only-binary=:all: -r requirements.lock
COPY pyproject.toml README.md ./
COPY certreload ./certreload
RUN /opt/certreload/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/certreload/bin/pip install --no-deps /wheels/certreload-*.whl \
 && /opt/certreload/bin/pip check \
 && /opt/certreload/bin/python -m compileall -q /opt/certreload

# ---- run: the venv only (no compilers, no build tools, no wheels, no pip cache) ------------
FROM python:3.11.11-slim-bookworm
ARG UID=101
ARG GID=103
# Named postgres, as the server's user (certreload's messages name it); an existing group
# with that gid (GID=26 is "tape" in Debian) is reused.
RUN (getent group "${GID}" >/dev/null || groupadd --system --gid "${GID}" postgres) \
 && useradd --system --uid "${UID}" --gid "${GID}" --home-dir /nonexistent \
      --shell /usr/sbin/nologin postgres
COPY --from=build /opt/certreload /opt/certreload
ENV PATH=/opt/certreload/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER ${UID}:${GID}
EXPOSE 9814
# Liveness of certreload's loop, not of the certificate (that is --check's and the metrics'
# job: a bad certificate must not get the sidecar restarted).  /healthz exists only with
# --listen: the check probes the port of CERTRELOAD_LISTEN, else 9814.  Kubernetes ignores
# HEALTHCHECK and uses the pod's probes (deploy/kubernetes/).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('CERTRELOAD_LISTEN', ':9814').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["certreload"]
CMD ["--help"]
