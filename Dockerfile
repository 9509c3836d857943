# jobproxy: one process, all concurrency from asyncio.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The locked versions first (a layer of their own, reused while the lock is unchanged),
# then the project itself without resolving anything again: the same image every day.
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md LICENSE ./
COPY proxy ./proxy
COPY jobserver ./jobserver
COPY infra ./infra
COPY config ./config
# What pip leaves behind while building (build/, the egg-info) is no part of the image.
RUN pip install --no-deps . \
    && rm -rf build jobproxy.egg-info \
    && useradd --system --uid 10001 --no-create-home jobproxy

USER 10001

# The proxy writes the URL it listens on to this file, and the health check asks there:
# a port given as a flag (--port 18000), which the check cannot see, is followed too.
ENV JOBPROXY_ADDRESS_FILE=/tmp/jobproxy.url

EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-m", "proxy.serving.healthcheck"]

# The same console script and flags the end-to-end tests start (with port 0 there).
CMD ["jobproxy", "--host", "0.0.0.0", "--port", "8000"]
