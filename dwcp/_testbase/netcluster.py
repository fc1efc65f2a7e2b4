"""Daemons in network namespaces of their own, on one bridge, and partitions between them.

    with NetCluster(root, 5) as nc:
        nc.partition({"n0", "n1"}, {"n2", "n3"}, {"n4"})   # iptables DROP across groups
        nc.write("n0", "k/1")                               # a catalog write through n0: acknowledged?
        nc.heal()

Topology: a Linux bridge in the caller's namespace (10.213.X.254/24) and, per node, a namespace
whose ``eth0`` (10.213.X.(i+1)) is a veth on the bridge; each node's daemon listens there, with the
Raft catalog and ``cluster.conflicts = "reject"`` (by default: ``conflicts=``), so that a send through
a daemon is acknowledged only once its version is committed in the catalog (the daemon records it
before it answers; under ``"lww"`` it answers first and records in the background).  A
partition is iptables DROP rules in each node's INPUT and OUTPUT for the addresses of the nodes in
other groups, and healing flushes them.  Control sockets are Unix sockets in the shared file system,
so the caller reaches every daemon whatever the partition.  Everything is created under a unique
name and removed by ``close`` (daemons killed by PID, namespaces and the bridge deleted).  Needs
root, ``ip`` and ``iptables``; ``NetCluster.unavailable()`` says why not, for a skip reason.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys

from dwcp.cli.demo import same_dwcp_env
from dwcp.daemon.control import request

from .daemons import Cluster

__all__ = ["NetCluster"]

PORT = 7700
_LEADER = re.compile(r"raft: leader is (\S+) \(term (\d+)\)")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


class NetCluster(Cluster):
    """A ``Cluster`` (its status, leader, wait) whose nodes each run in a namespace of their own."""

    @staticmethod
    def unavailable() -> str | None:
        """Why the cluster cannot be built here (a skip reason), or None."""
        if os.geteuid() != 0:
            return "needs root (network namespaces, a bridge, iptables)"
        for tool in ("ip", "iptables"):
            if shutil.which(tool) is None:
                return f"no `{tool}` (apt-get install iproute2 iptables)"
        probe = f"dwcp-probe-{secrets.token_hex(3)}"
        r = _ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"`ip netns add` failed: {r.stderr.strip()}"
        _ip("netns", "del", probe, check=False)
        return None

    def __init__(self, root: str, n: int, *, tick_ms: float = 50.0, conflicts: str = "reject",
                 replicas: int | None = None, repair_interval_s: float = 0.0) -> None:  # fmt: skip
        self.root, self.tag = root, secrets.token_hex(3)
        self.conflicts, self.replicas, self.repair_interval_s = conflicts, replicas, repair_interval_s
        self.ids = [f"n{i}" for i in range(n)]
        net = 10 + int(self.tag, 16) % 200
        self.ns = {i: f"dwcp-{self.tag}-{i}" for i in self.ids}
        self.addr = {i: f"10.213.{net}.{k + 1}" for k, i in enumerate(self.ids)}
        self.bridge = f"dwbr{self.tag}"
        self.tick_ms = tick_ms
        self.ports = dict.fromkeys(self.ids, PORT)  # each node has an address of its own
        self.procs: dict[str, subprocess.Popen] = {}
        self._made: list[tuple[str, ...]] = []  # what close() deletes, in reverse
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", "del", self.bridge))
            _ip("addr", "add", f"10.213.{net}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for k, i in enumerate(self.ids):
                _ip("netns", "add", self.ns[i])
                self._made.append(("netns", "del", self.ns[i]))
                veth = f"dw{self.tag}{k}"
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", self.ns[i])
                self._made.append(("link", "del", veth))
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", self.ns[i], "addr", "add", f"{self.addr[i]}/24", "dev", "eth0")
                _ip("-n", self.ns[i], "link", "set", "eth0", "up")
                _ip("-n", self.ns[i], "link", "set", "lo", "up")
            for i in self.ids:
                self.start(i)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> NetCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- daemons ------------------------------------------------------------------
    def host(self, i: str) -> str:
        return self.addr[i]

    def storage_extra(self) -> str:
        return "scrub_rate_bytes_per_s = 0\n"

    def cluster_extra(self) -> str:
        out = f'conflicts = "{self.conflicts}"\nrepair_interval_s = {self.repair_interval_s}\n'
        return out + (f"replicas = {self.replicas}\n" if self.replicas is not None else "")

    def extra_sections(self) -> str:
        return "[transport]\nconnect_timeout_s = 2.0\nstall_timeout_s = 3.0\n"

    def prefix(self, i: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[i]]

    def restart(self, i: str, timeout_s: float = 20.0) -> None:
        """Kill node ``i``'s daemon (-9, by PID) and start it again, as after a reboot: whatever it had in
        flight dies with it, including what the kernel would still retransmit for its closed TCP sockets
        (``ss -K`` in its namespace); returns once it answers on its control socket."""
        p = self.procs[i]
        if p.poll() is None:
            p.kill()
        p.wait()
        subprocess.run([*self.prefix(i), "ss", "-taK"], capture_output=True, timeout=30)
        self.start(i)
        self.wait(lambda: self.status(i), timeout=timeout_s, what=f"{i} restarted")

    def sock(self, i: str) -> str:
        return os.path.join(self.root, i, "control.sock")

    def leader(self, among=None) -> str | None:
        """The node that says it leads, among ``among`` (all), if exactly one does (a partition can leave
        a stale leader on the other side until it hears of the new term)."""
        says = [
            i for i in among or self.ids if ((self.status(i) or {}).get("raft") or {}).get("role") == "leader"
        ]
        return says[0] if len(says) == 1 else None

    # -- partitions -----------------------------------------------------------------
    def _iptables(self, i: str, *args: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.ns[i], "iptables", *args], check=True, capture_output=True,
                       timeout=30)  # fmt: skip

    def partition(self, *groups) -> None:
        """Cut every link between nodes of different ``groups`` (sets of ids; a node in none is alone)."""
        self.heal()
        where = {i: k for k, g in enumerate(groups) for i in g}
        for i in self.ids:
            for j in self.ids:
                if i != j and where.get(i, ("alone", i)) != where.get(j, ("alone", j)):
                    self._iptables(i, "-A", "INPUT", "-s", self.addr[j], "-j", "DROP")
                    self._iptables(i, "-A", "OUTPUT", "-d", self.addr[j], "-j", "DROP")

    def heal(self) -> None:
        for i in self.ids:
            self._iptables(i, "-F", "INPUT")
            self._iptables(i, "-F", "OUTPUT")

    # -- writes and what the logs say ---------------------------------------------------
    def write(self, i: str, key: str, timeout_s: float = 30.0) -> bool:
        """A send through node ``i``'s daemon to itself: acknowledged (True) only once the catalog committed
        its version (``conflicts = "reject"``: recorded before the answer)."""
        src = os.path.join(self.root, "payload")
        if not os.path.exists(src):
            with open(src, "wb") as f:
                f.write(os.urandom(64 << 10))
        try:
            r = self.send(i, src, key, timeout_s=timeout_s)
        except (OSError, ValueError):
            return False
        return bool(r.get("ok"))

    def send(self, i: str, path: str, key: str, to: str | None = None, timeout_s: float = 30.0) -> dict:
        """The file at ``path`` sent as ``key`` by node ``i``'s daemon (from its namespace, with its origin:
        writer, HLC, parent) to ``to`` (HOST:PORT, a peer id, ...; default: ``i`` itself); its answer."""
        req = {"op": "send", "path": path, "to": to or f"{self.addr[i]}:{PORT}", "key": key}
        return request(self.sock(i), req, timeout_s=timeout_s)

    def dwcp(self, i: str, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        """``dwcp ARGS --config <i's config>`` run in node ``i``'s namespace (its output, not checked)."""
        argv = [
            *self.prefix(i),
            sys.executable,
            "-m",
            "dwcp",
            *args,
            "--config",
            os.path.join(self.root, f"{i}.toml"),
        ]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=self.root,
                              env=same_dwcp_env())  # fmt: skip

    def leaders_by_term(self) -> dict[int, set[str]]:
        """Every (term, leader) any node logged seeing: two leaders in one term would show as a set of two."""
        out: dict[int, set[str]] = {}
        for i in self.ids:
            try:
                with open(os.path.join(self.root, f"{i}.log"), errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            for leader, term in _LEADER.findall(text):
                if leader != "None":
                    out.setdefault(int(term), set()).add(leader)
        return out

    def close(self) -> None:
        super().close()
        self.procs.clear()
        while self._made:
            _ip(*self._made.pop(), check=False)
