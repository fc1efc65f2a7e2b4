"""The multi-stream transport (AMST): streams, socket tuning, rate limit, stream controller."""
