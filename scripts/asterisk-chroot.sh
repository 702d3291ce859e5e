#!/usr/bin/env bash
# Build (once) a Debian sid chroot holding a real Asterisk 22, for the demo and the tests.
# Debian 12 ships no asterisk package and no Docker engine runs on these machines; see
# docs/asterisk-handoff.md. The chroot lives in a cache dir outside the repo.
# Prints the chroot path on stdout. Idempotent: a finished chroot is reused.
set -euo pipefail

root="${WA_ASTERISK_CHROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/whatsapp-asterisk-gateway/asterisk-sid}"
stamp="$root/.gateway-ready"

if [ -f "$stamp" ]; then
  echo "$root"
  exit 0
fi

log() { echo "asterisk-chroot: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "building the Asterisk chroot needs root (debootstrap, chroot, mount)"
  exit 1
fi

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi

rm -rf "$root.partial"
mkdir -p "$(dirname "$root")"
log "debootstrap sid into $root (about a minute)"
debootstrap --variant=minbase sid "$root.partial" >&2
# The mirror's Release file may be past its Valid-Until date.
chroot "$root.partial" apt-get -q -o Acquire::Check-Valid-Until=false update >&2
chroot "$root.partial" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  asterisk asterisk-modules asterisk-core-sounds-en-gsm >&2
chroot "$root.partial" apt-get clean >&2
mv "$root.partial" "$root"
touch "$stamp"
log "ready: $(chroot "$root" /usr/sbin/asterisk -V 2>/dev/null || true)"
echo "$root"
