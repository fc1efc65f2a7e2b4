"""Operating dwcpd: health checks and their registry, and the other sans-IO pieces an operator relies on."""
