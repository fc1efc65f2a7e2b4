"""dwcpd: the daemon (data port, local control API, systemd integration)."""
