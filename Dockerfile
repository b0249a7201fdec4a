# Flywheel itself: `flywheel run` (the controller) and `flywheel serve` (the webhook service) in one
# image; deploy/ runs it. Build it from the repository's root: docker build -t flywheel .
FROM python:3.11-slim

# git: the controller mirrors the repositories it watches
RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /src/
COPY controller /src/controller
COPY webhooks /src/webhooks
RUN pip install --no-cache-dir /src \
    && rm -rf /src

# a user of its own, by number so that Kubernetes can tell it is not root (runAsNonRoot)
RUN groupadd --gid 10001 flywheel \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/flywheel flywheel
USER 10001:10001
WORKDIR /home/flywheel
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# 8080: the webhook service (flywheel serve --port); 8081: the controller's /healthz (FLYWHEEL_HEALTH_PORT)
EXPOSE 8080 8081
ENTRYPOINT ["flywheel"]
CMD ["--help"]
