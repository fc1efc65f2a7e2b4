#!/bin/sh
# Install dwcpd as a systemd service on this host.
#
#   scripts/install-systemd.sh [--root DIR] [--dwcp PATH] [--no-start]
#
# Creates the system user `dwcp`, /etc/dwcp (config, certificates) and the unit
# /etc/systemd/system/dwcpd.service pointing at the installed `dwcp` (PATH, or
# the one on $PATH); installs systemd/dwcp.toml.example as /etc/dwcp/dwcp.toml
# only when no config exists (an existing one is never overwritten), checks it
# with `dwcp check-config`, then daemon-reloads and enables the service.
# --root DIR installs the files under DIR instead (packaging, tests): no user,
# no systemctl.  Then the service's identity, readable by it:
#   dwcp certs init --dir /etc/dwcp/ca
#   dwcp certs issue --dir /etc/dwcp/ca --node NODE --host ADDR --out /etc/dwcp/node --owner dwcp
set -eu

ROOT=""
DWCP=""
START=1
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$2"; shift 2 ;;
        --dwcp) DWCP="$2"; shift 2 ;;
        --no-start) START=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "install-systemd.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "$0")/.." && pwd)
[ -n "$DWCP" ] || DWCP=$(command -v dwcp || true)
if [ -z "$DWCP" ] || [ ! -x "$DWCP" ]; then
    echo "install-systemd.sh: no dwcp executable (pip install . first, or pass --dwcp PATH)" >&2
    exit 1
fi

install -d -m 0755 "$ROOT/etc/dwcp" "$ROOT/etc/systemd/system" "$ROOT/usr/share/doc/dwcp"
# the unit's Documentation=: the README and the example config, every setting documented
install -m 0644 "$HERE/README.md" "$HERE/systemd/dwcp.toml.example" "$ROOT/usr/share/doc/dwcp/"
if [ ! -e "$ROOT/etc/dwcp/dwcp.toml" ]; then
    install -m 0644 "$HERE/systemd/dwcp.toml.example" "$ROOT/etc/dwcp/dwcp.toml"
    echo "installed $ROOT/etc/dwcp/dwcp.toml (edit node.id and the certificate paths)"
else
    echo "kept the existing $ROOT/etc/dwcp/dwcp.toml"
fi
sed "s|/usr/local/bin/dwcp|$DWCP|g" "$HERE/systemd/dwcpd.service" > "$ROOT/etc/systemd/system/dwcpd.service.tmp"
chmod 0644 "$ROOT/etc/systemd/system/dwcpd.service.tmp"
mv "$ROOT/etc/systemd/system/dwcpd.service.tmp" "$ROOT/etc/systemd/system/dwcpd.service"
echo "installed $ROOT/etc/systemd/system/dwcpd.service (ExecStart=$DWCP daemon ...)"
# the man page and bash completion, generated from the installed command's own definitions
install -d -m 0755 "$ROOT/usr/local/share/man/man1" "$ROOT/etc/bash_completion.d"
"$DWCP" man | gzip -9n > "$ROOT/usr/local/share/man/man1/dwcp.1.gz"
"$DWCP" completion bash > "$ROOT/etc/bash_completion.d/dwcp"

if [ -n "$ROOT" ]; then
    exit 0
fi
if ! id dwcp >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/dwcp --no-create-home --shell /usr/sbin/nologin dwcp
fi
chgrp dwcp /etc/dwcp && chmod 0750 /etc/dwcp
# as the service user, as the unit's ExecStartPre will: its keys must be readable by it
setpriv --reuid=dwcp --regid=dwcp --init-groups "$DWCP" check-config /etc/dwcp/dwcp.toml || {
    echo "install-systemd.sh: fix /etc/dwcp/dwcp.toml, then: systemctl enable --now dwcpd" >&2
    exit 1
}
systemctl daemon-reload
if [ "$START" = 1 ]; then
    systemctl enable --now dwcpd
else
    systemctl enable dwcpd
fi
