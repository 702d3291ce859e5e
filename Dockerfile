# The gateway. Asterisk runs in its own container (docker/asterisk.Dockerfile).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir .
EXPOSE 8080
ENTRYPOINT ["whatsapp-gateway"]
CMD ["serve", "--config", "/etc/whatsapp-gateway/gateway.yaml"]
