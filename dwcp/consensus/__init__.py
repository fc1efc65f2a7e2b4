"""Consensus over the cluster catalog: sans-IO cores (``raft``), driven by the daemon and the simulator."""
