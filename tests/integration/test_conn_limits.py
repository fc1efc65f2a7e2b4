"""Connection starvation (issue 13, item 8): strangers holding the data port's connections open.

The attackers bind their sockets to 127.0.0.2 (all of 127.0.0.0/8 is loopback
on Linux) while the legitimate sender connects from 127.0.0.1, so the
per-source limit meets two sources, as it would across a network; one test
puts both on 127.0.0.1.  Every attack thread stops on an Event and closes its
socket in ``finally``; every wait is bounded.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dwcp._testbase.transfer import server_config
from dwcp.config import SecurityConfig, TransportConfig, from_dict
from dwcp.transport.sender import Sender
from dwcp.transport.server import DataServer
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control

ATTACKER = "127.0.0.2"
SENDS = 20
SEND_BYTES = 256 << 10
SEND_BUDGET_S = 30.0  # a send counts as a success only if it finished within this


def conn_limits_config(tmp_path, *, plaintext: bool, certs=None, **listen):
    """``server_config`` with max_connections = 32 (the issue's setting) and ``listen`` overrides."""
    cfg = server_config(tmp_path / "rx", plaintext=plaintext, certs=certs)
    raw = {sec: {f: getattr(getattr(cfg, sec), f) for f in getattr(cfg, sec).__dataclass_fields__}
           for sec in ("node", "listen", "security", "storage", "transport")}  # fmt: skip
    raw["listen"].update({"max_connections": 32, **listen})
    return from_dict(raw)


class Attack:
    """``n`` clients from ``source``, each holding a connection open and reconnecting as soon as it is dropped.

    ``drip_s``: send one byte of a frame header every ``drip_s`` seconds (a slowloris); None: stay silent.
    """

    def __init__(self, addr, n: int, *, source: str = ATTACKER, drip_s: float | None = None) -> None:
        self.addr, self.source, self.drip_s = addr, source, drip_s
        self.stop = threading.Event()
        self.connects = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(n)]

    def __enter__(self) -> Attack:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(5)
        assert not any(t.is_alive() for t in self._threads), "an attack thread hung"

    def _client(self) -> None:
        header = encode_control(C.FRAME_HELLO, 1, {"v": 1, "role": "control", "op": "probe"})[: C.HEADER_SIZE]
        while not self.stop.is_set():
            s = socket.socket()
            try:
                s.bind((self.source, 0))
                s.settimeout(2.0)
                s.connect(self.addr)
                with self._lock:
                    self.connects += 1
                i = 0
                while not self.stop.is_set():
                    if self.drip_s is None:
                        s.settimeout(0.2)
                        try:
                            if not s.recv(4096):
                                break  # dropped: reconnect at once
                        except TimeoutError:
                            continue
                    else:
                        s.sendall(header[i % len(header) : i % len(header) + 1])
                        i += 1
                        if self.stop.wait(self.drip_s):
                            break
            except OSError:
                pass  # refused or reset: reconnect at once
            finally:
                s.close()


def legit_sends(host: str, port: int, security: SecurityConfig, *, n: int = SENDS) -> list[float | None]:
    """``n`` sends of 256 KiB (1-2 streams), 4 at a time; each one's seconds, or None if it failed."""
    tp = TransportConfig(stall_timeout_s=5.0, connect_timeout_s=5.0, chunk_size_bytes=64 << 10, max_streams=2)
    data = np.random.default_rng(1).integers(0, 256, SEND_BYTES, dtype=np.uint8)

    def one(i: int) -> float | None:
        t0 = time.monotonic()
        try:
            Sender(tp, security).send(data, host, port, f"legit/{i}", streams=1 + i % 2)
        except Exception:  # noqa: BLE001 - a failed send is what the test counts
            return None
        return time.monotonic() - t0

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


def succeeded(times: list[float | None]) -> int:
    return sum(1 for t in times if t is not None and t <= SEND_BUDGET_S)


def test_idle_squatters_do_not_starve_a_tls_daemon(tmp_path, pki):
    """(a) 32 idle unauthenticated connections that reconnect at once: >= 90% of the sends still get through."""
    rx, tx = pki["rx"], pki["tx"]
    srv = DataServer(conn_limits_config(tmp_path, plaintext=False, certs=rx))
    host, port = srv.start()
    try:
        with Attack((host, port), 32) as attack:
            deadline = time.monotonic() + 5
            while attack.connects < 64 and time.monotonic() < deadline:
                time.sleep(0.05)  # the attack is in full swing (dropped ones reconnected) before the first send
            times = legit_sends(host, port, SecurityConfig(ca_cert=tx.ca_cert, cert=tx.cert, key=tx.key))
            assert attack.connects > 32
        st = srv.stats_snapshot()
        ok = succeeded(times)
        assert ok >= 0.9 * SENDS, (ok, times, st)
        # the squatters' own reconnects evicted one another (rule 4): 127.0.0.2 never held more than 4
        assert st["evicted_per_source_total"] >= 32
        assert all(srv.store.latest(f"legit/{i}") is not None for i, t in enumerate(times) if t is not None)
    finally:
        srv.close()
