"""Daemons as subprocesses for tests: one plaintext loopback `dwcp daemon` (``start_daemon``), or a
loopback cluster of them with consensus (``Cluster``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from dwcp.cli.demo import same_dwcp_env
from dwcp.daemon.control import request

__all__ = ["Cluster", "free_ports", "start_daemon"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_daemon(root, extra: str = "") -> tuple[subprocess.Popen, str, dict]:
    """Start node "rx": plaintext, data and metrics ports on loopback picked by the kernel, data in
    ``root``/rx, config ``root``/rx.toml (``extra``: more TOML, e.g. a [health] section), run from
    ``root`` (not the checkout); returns (process, config path, its first status) once it answers."""
    data, cfg = os.path.join(root, "rx"), os.path.join(root, "rx.toml")
    with open(cfg, "w") as f:
        f.write(f'[node]\nid = "rx"\n[listen]\nhost = "127.0.0.1"\ndata_port = 0\nmetrics_port = 0\n'
                f'[security]\nplaintext = true\n[storage]\ndata_dir = "{data}"\n{extra}')  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "dwcp", "daemon", "--config", cfg], env=same_dwcp_env(),
                            cwd=str(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            return proc, cfg, request(os.path.join(data, "control.sock"), {"op": "status"}, timeout_s=5)
        except OSError:
            if time.monotonic() >= deadline or proc.poll() is not None:
                proc.kill()
                proc.wait(20)
                raise RuntimeError(f"dwcp daemon under {root} did not start") from None
            time.sleep(0.1)


class Cluster:
    def __init__(self, root, n: int) -> None:
        self.root, self.ids = root, [f"c{i}" for i in range(n)]
        self.ports = dict(zip(self.ids, free_ports(n)))
        self.procs: dict[str, subprocess.Popen] = {}
        for i in self.ids:
            self.start(i)

    tick_ms = 50.0

    def peer_extra(self, p: str) -> str:
        """More TOML lines for peer ``p``'s [[cluster.peers]] table (a subclass adds keys, say)."""
        return ""

    def storage_extra(self) -> str:
        """More TOML lines for the [storage] section."""
        return ""

    def cluster_extra(self) -> str:
        """More TOML lines for the [cluster] section (before its peers)."""
        return ""

    def consensus_extra(self) -> str:
        """More TOML lines for the [consensus] section."""
        return ""

    def host(self, i: str) -> str:
        """The address node ``i`` listens on."""
        return "127.0.0.1"

    def extra_sections(self) -> str:
        """More TOML sections, at the end ([transport], say)."""
        return ""

    def cfg(self, i: str) -> str:
        peers = "".join(f'[[cluster.peers]]\nid = "{p}"\naddress = "{self.host(p)}:{self.ports[p]}"\n{self.peer_extra(p)}'
                        for p in self.ids if p != i)  # fmt: skip
        path = os.path.join(self.root, f"{i}.toml")
        with open(path, "w") as f:
            f.write(f'[node]\nid = "{i}"\n[listen]\nhost = "{self.host(i)}"\ndata_port = {self.ports[i]}\n'
                    f'metrics_port = -1\n[security]\nplaintext = true\n[storage]\n'
                    f'data_dir = "{os.path.join(self.root, i)}"\n{self.storage_extra()}[cluster]\nprobe_interval_s = 1.0\n{self.cluster_extra()}{peers}'
                    f'[consensus]\nenabled = true\ntick_ms = {self.tick_ms}\nelection_ticks = 10\n'
                    f'{self.consensus_extra()}{self.extra_sections()}')  # fmt: skip
        return path

    def prefix(self, i: str) -> list[str]:
        """What runs node ``i``'s daemon command (``ip netns exec NS`` for a namespace; nothing here)."""
        return []

    def start(self, i: str) -> None:
        log = open(os.path.join(self.root, f"{i}.log"), "ab")
        self.procs[i] = subprocess.Popen([*self.prefix(i), sys.executable, "-m", "dwcp", "daemon", "--config",
                                          self.cfg(i)], stdout=log, stderr=subprocess.STDOUT, env=same_dwcp_env(),
                                         cwd=self.root)  # fmt: skip
        log.close()

    def status(self, i: str) -> dict | None:
        try:
            return request(os.path.join(self.root, i, "control.sock"), {"op": "status"}, timeout_s=5)
        except OSError:
            return None

    def leader(self, among=None) -> str | None:
        for i in among or self.ids:
            st = self.status(i)
            if st and st["raft"]["role"] == "leader":
                return i
        return None

    def wait(self, pred, timeout: float = 20.0, what: str = ""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
