# Asterisk 22 from Debian, with the sample configuration of asterisk-conf/.
# Debian's stable releases ship no asterisk package; a dated sid snapshot keeps builds
# repeatable (bump the date to upgrade).
FROM debian:sid-20241111-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      asterisk asterisk-modules asterisk-core-sounds-en-gsm asterisk-moh-opsound-gsm \
    && rm -rf /var/lib/apt/lists/*
COPY asterisk-conf/ /etc/asterisk/
RUN mkdir -p /var/run/asterisk && chown asterisk:asterisk /var/run/asterisk
# The package's asterisk user owns /var/{lib,log,spool,run}/asterisk; AMI and RTP use ports
# above 1024, so Asterisk never needs root.
USER asterisk
CMD ["/usr/sbin/asterisk", "-f"]
