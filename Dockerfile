# syntax=docker/dockerfile:1
# bandit-stream: multi-stage build on python:3.11-slim, run as a non-root user.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY requirements/service.lock ./requirements/
COPY policies ./policies
COPY stream ./stream
# A virtual environment we can copy whole into the runtime stage: the service alone, no
# [bench] (plots, tuning) or [local] (embedded broker) extra, at the locked versions.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install --require-hashes -r requirements/service.lock \
 && /opt/venv/bin/pip install --no-deps .
# Compile the numba kernels once at build time (the cache ships in the image).
ENV NUMBA_CACHE_DIR=/opt/numba-cache
RUN /opt/venv/bin/python -c "from policies.kernels import warm_up; warm_up()"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/opt/numba-cache \
    RL_STATE_DIR=/var/lib/bandit-stream \
    RL_METRICS_PORT=9464
RUN groupadd --system --gid 10001 bandit \
 && useradd --system --uid 10001 --gid bandit --home-dir /var/lib/bandit-stream bandit \
 && mkdir -p /var/lib/bandit-stream \
 && chown bandit:bandit /var/lib/bandit-stream
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=bandit:bandit /opt/numba-cache /opt/numba-cache
USER 10001:10001
WORKDIR /var/lib/bandit-stream
VOLUME ["/var/lib/bandit-stream"]
EXPOSE 9464
# The slim image has no curl: ask /healthz with the standard library.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RL_METRICS_PORT', '9464') + '/healthz', timeout=2)"]
ENTRYPOINT ["bandit-stream"]
CMD ["run"]
