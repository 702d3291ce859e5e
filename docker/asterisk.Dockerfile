# Asterisk 22 from Debian, with the sample configuration of asterisk-conf/.
# Debian's stable releases ship no asterisk package, so it comes from sid. The base image is
# dated, but apt installs the asterisk sid has on the day of the build: pin it for a repeatable
# image with --build-arg ASTERISK_VERSION=<version from `apt-cache policy asterisk`> (the tests
# ran on 1:22.10.1+dfsg+~cs6.17.60671434-1).
FROM debian:sid-20241111-slim
ARG ASTERISK_VERSION=""
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      asterisk${ASTERISK_VERSION:+=$ASTERISK_VERSION} \
      asterisk-modules${ASTERISK_VERSION:+=$ASTERISK_VERSION} \
      asterisk-core-sounds-en-gsm asterisk-moh-opsound-gsm \
    && rm -rf /var/lib/apt/lists/*
COPY asterisk-conf/ /etc/asterisk/
RUN mkdir -p /var/run/asterisk && chown asterisk:asterisk /var/run/asterisk
# The package's asterisk user owns /var/{lib,log,spool,run}/asterisk; AMI and RTP use ports
# above 1024, so Asterisk never needs root.
USER asterisk
CMD ["/usr/sbin/asterisk", "-f"]
