# Asterisk 22 from Debian, with the sample configuration of asterisk-conf/.
FROM debian:sid-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      asterisk asterisk-modules asterisk-core-sounds-en-gsm asterisk-moh-opsound-gsm \
    && rm -rf /var/lib/apt/lists/*
COPY asterisk-conf/ /etc/asterisk/
CMD ["/usr/sbin/asterisk", "-f", "-U", "asterisk", "-G", "asterisk"]
