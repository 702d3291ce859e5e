# The gateway. Asterisk runs in its own container (docker/asterisk.Dockerfile).
FROM python:3.11.10-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY asterisk-conf ./asterisk-conf
COPY monitoring ./monitoring
COPY packaging ./packaging
COPY gateway.example.yaml ./
COPY scripts/asterisk-chroot.sh ./scripts/
# [postgres]: psycopg, for store.url (several gateways sharing one store, docs/scaling.md)
RUN pip install --no-cache-dir ".[postgres]" \
    && useradd --system --no-create-home --home-dir /app gateway \
    && mkdir -p /app/var && chown gateway:gateway /app/var
USER gateway
EXPOSE 8080
ENTRYPOINT ["whatsapp-gateway"]
CMD ["serve", "--config", "/etc/whatsapp-gateway/gateway.yaml"]
