#!/usr/bin/env bash
# Install what the gateway needs on a fresh Debian/Ubuntu machine, idempotently:
# Python venv + the package (with test tools), and a real Asterisk when none is installed
# (a Debian sid chroot in a cache dir outside the repo, see scripts/asterisk-chroot.sh).
# Run by scripts/demo and scripts/test (with --test); safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { echo "setup: $*" >&2; }

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ "$(id -u)" = 0 ] && ! command -v debootstrap >/dev/null; then need_apt+=(debootstrap); fi
# --test: a real Prometheus too, which runs the Grafana dashboard's queries in the tests.
if [ "${1:-}" = --test ] && [ "$(id -u)" = 0 ] && ! command -v prometheus >/dev/null; then
  need_apt+=(prometheus)
fi
# --test: a real PostgreSQL too (tests/pg.py runs initdb + pg_ctl in a temp dir, as the
# postgres user the package creates), for the shared-store tests (docs/scaling.md).
if [ "${1:-}" = --test ] && [ "$(id -u)" = 0 ] \
    && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "please install: ${need_apt[*]} (needs root)"; exit 1
  fi
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "installing the gateway and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi

scripts/asterisk-chroot.sh >/dev/null

# --test: nginx's and Caddy's binaries, only to check the TLS-front examples in packaging/
# (`nginx -t`, `caddy validate`). Unpacked from Debian's packages into the cache, never
# installed, so no web server is started or enabled on this machine. scripts/test puts them
# on PATH.
tools="${XDG_CACHE_HOME:-$HOME/.cache}/whatsapp-asterisk-gateway/tools"
if [ "${1:-}" = --test ] && [ ! -x "$tools/bin/caddy" ] && command -v apt-get >/dev/null; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && { apt-get download -qq nginx caddy 2>/dev/null \
        || { apt-get update -qq && apt-get download -qq nginx caddy; }; } >/dev/null 2>&1 \
      && for deb in "$tmp"/*.deb; do dpkg -x "$deb" "$tmp/root"; done); then
    mkdir -p "$tools/bin"
    cp "$tmp/root/usr/sbin/nginx" "$tmp/root/usr/bin/caddy" "$tools/bin/"
  else
    log "could not unpack nginx and caddy: the TLS-front example checks will skip"
  fi
  rm -rf "$tmp"
fi
log "ready"
