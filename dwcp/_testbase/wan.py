"""An emulated WAN link between two network namespaces, for tests and perf/.

    with Testbed(Link(rate_bit_s=1e9, rtt_ms=50, loss=0.001)) as tb:
        tb.run("b", ["iperf3", "-s", "-D"]) ...
        tb.popen("a", [...])          # any command, inside host a's namespace

Topology: two namespaces, ``a`` (10.201.N.1) and ``b`` (10.201.N.2), each with
a TUN device and a route to the other through it.  A relay process owns both
TUN devices and carries every packet across after the one-way delay
(rtt/2, plus uniform jitter; per direction FIFO, so no reordering).  This
kernel has no netem, so the delay is in user space; the TUN MTU is large
(64 000 bytes) so that 1 Gbit/s is ~2 000 packets a second, which Python
holds easily.  Rate: tbf on each TUN's egress (a qdisc in front of the relay).
Loss: iptables ``statistic --mode random`` on each host's input from its TUN
(where the packet arrives, so the sender learns of it only as TCP would).

Everything is created under a unique name and removed on every exit path
(the context manager, Ctrl-C, and the relay dies with its parent through
PR_SET_PDEATHSIG).  Needs root, /dev/net/tun, ``ip``, ``tc`` and ``iptables``;
``Testbed.unavailable()`` says why not, for a test's skip reason.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import heapq
import json
import os
import random
import secrets
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

__all__ = ["Link", "Testbed", "TestbedError"]

TUN_MTU = 64000
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1


class TestbedError(RuntimeError):
    """The testbed could not be built or measured."""

    __test__ = False


@dataclass(frozen=True)
class Link:
    """One emulated path; applied the same way in both directions."""

    rate_bit_s: float = 0.0  # 0 = no cap
    rtt_ms: float = 0.0  # round-trip delay added by the relay (half each way)
    jitter_ms: float = 0.0  # +- uniform per packet, per direction
    loss: float = 0.0  # drop probability per packet, each direction
    queue_ms: float = 25.0  # tbf buffer in front of the link, in milliseconds at the rate

    def __post_init__(self) -> None:
        if self.rate_bit_s < 0 or self.rtt_ms < 0 or self.jitter_ms < 0 or self.queue_ms <= 0:
            raise ValueError("rate, rtt and jitter must be >= 0 and queue_ms > 0")
        if self.jitter_ms * 2 > self.rtt_ms and self.jitter_ms:
            raise ValueError("jitter_ms must be at most half of rtt_ms (a one-way delay cannot be negative)")
        if not 0 <= self.loss < 1:
            raise ValueError("loss must be in [0, 1)")


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc().setns(fd, _CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns({path}): {os.strerror(e)}")
    finally:
        os.close(fd)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


# -- the relay process -------------------------------------------------------


def relay_main(ns_a: str, ns_b: str, tun_a: str, tun_b: str, delay_s: float, jitter_s: float) -> None:
    """Own both TUN devices and carry packets across after the delay (runs as its own process).

    Prints "ready" once both devices exist; reads JSON lines on stdin to
    change {"delay_s", "jitter_s"}; prints its packet counts as JSON when
    asked with "stats" and on exit.
    """
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    _setns(f"/var/run/netns/{ns_a}")
    fa = _open_tun(tun_a)
    _setns(f"/var/run/netns/{ns_b}")
    fb = _open_tun(tun_b)
    if _libc().setns(home, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns back home")
    os.close(home)
    other = {fa: fb, fb: fa}
    last = {fa: 0.0, fb: 0.0}  # FIFO per direction: a packet never overtakes the previous one
    stats = {"a_to_b": 0, "b_to_a": 0, "bytes_a_to_b": 0, "bytes_b_to_a": 0}
    heap: list[tuple[float, int, int, bytes]] = []
    seq = 0
    rnd = random.Random(0)
    ep = select.epoll()
    ep.register(fa, select.EPOLLIN)
    ep.register(fb, select.EPOLLIN)
    ep.register(sys.stdin.fileno(), select.EPOLLIN)
    print("ready", flush=True)
    stdin_buf = b""
    while True:
        timeout = max(0.0, heap[0][0] - time.monotonic()) if heap else -1
        for fd, _ in ep.poll(timeout):
            if fd == sys.stdin.fileno():
                chunk = os.read(fd, 65536)
                if not chunk:
                    print(json.dumps(stats), flush=True)
                    return
                stdin_buf += chunk
                while b"\n" in stdin_buf:
                    line, stdin_buf = stdin_buf.split(b"\n", 1)
                    if line.strip() == b"stats":
                        print(json.dumps(stats), flush=True)
                        continue
                    msg = json.loads(line)
                    delay_s, jitter_s = float(msg["delay_s"]), float(msg["jitter_s"])
                continue
            now = time.monotonic()
            for _ in range(256):  # a bounded batch per wake-up keeps both directions moving
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                except OSError as exc:  # EIO: the device is not up yet (poll says so too)
                    if exc.errno != errno.EIO:
                        raise
                    time.sleep(0.001)
                    break
                d = delay_s + (rnd.uniform(-jitter_s, jitter_s) if jitter_s else 0.0)
                t = max(now + d, last[fd])
                last[fd] = t
                heapq.heappush(heap, (t, seq, other[fd], pkt))
                seq += 1
                key = "a_to_b" if fd == fa else "b_to_a"
                stats[key] += 1
                stats["bytes_" + key] += len(pkt)
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, out, pkt = heapq.heappop(heap)
            try:
                os.write(out, pkt)
            except BlockingIOError:
                pass  # the far stack's backlog is full: a drop, as on a real link
            except OSError as exc:  # EIO: the far device is down (still being set up): a drop
                if exc.errno != errno.EIO:
                    raise


# -- the testbed -------------------------------------------------------------


class Testbed:
    """Two hosts ``a`` and ``b`` joined by an emulated link (a context manager)."""

    __test__ = False  # not a pytest test class

    @staticmethod
    def unavailable() -> str | None:
        """Why a testbed cannot be built here, or None."""
        if os.geteuid() != 0:
            return "needs root (network namespaces, TUN, tc, iptables)"
        if not os.path.exists("/dev/net/tun"):
            return "no /dev/net/tun"
        for tool in ("ip", "tc", "iptables"):
            if shutil.which(tool) is None:
                return f"no `{tool}` (apt-get install iproute2 iptables)"
        return None

    def __init__(self, link: Link = Link(), *, name: str | None = None) -> None:
        why = self.unavailable()
        if why:
            raise TestbedError(why)
        self.link = link
        tag = name or secrets.token_hex(3)
        self.ns = {"a": f"dwcp-wan-{tag}-a", "b": f"dwcp-wan-{tag}-b"}
        self.tun = {"a": f"dwta{tag}"[:15], "b": f"dwtb{tag}"[:15]}
        n = int(tag[:2], 16) if all(c in "0123456789abcdef" for c in tag[:2]) else 1
        self.addr = {"a": f"10.201.{n}.1", "b": f"10.201.{n}.2"}
        self._relay: subprocess.Popen | None = None
        self._up = False

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> Testbed:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        for h in ("a", "b"):
            _run(["ip", "netns", "add", self.ns[h]])
            self._up = True
            self.run(h, ["ip", "link", "set", "lo", "up"])
        self._relay = subprocess.Popen(
            [sys.executable, "-c", "import sys; from dwcp._testbase.wan import relay_main as m; "
             "m(*sys.argv[1:5], float(sys.argv[5]), float(sys.argv[6]))",
             self.ns["a"], self.ns["b"], self.tun["a"], self.tun["b"], str(self.link.rtt_ms / 2000),
             str(self.link.jitter_ms / 1000)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_same_env(),
        )  # fmt: skip
        assert self._relay.stdout is not None
        line = self._relay.stdout.readline().strip()
        if line != "ready":
            raise TestbedError(f"the relay did not start (it said {line!r})")
        for h, peer in (("a", "b"), ("b", "a")):
            tun = self.tun[h]
            self.run(h, ["ip", "addr", "add", f"{self.addr[h]}/32", "dev", tun])
            self.run(h, ["ip", "link", "set", tun, "mtu", str(TUN_MTU), "txqueuelen", "10000", "up"])
            self.run(h, ["ip", "route", "add", f"{self.addr[peer]}/32", "dev", tun])
            # room for the bandwidth-delay product (TCP autotuning; per namespace)
            for k in ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"):
                self.run(h, ["sysctl", "-q", "-w", f"{k}=4096 131072 268435456"])
        self.set_link(self.link)

    def close(self) -> None:
        """Remove everything (idempotent; never raises for what is already gone)."""
        if self._relay is not None:
            try:
                if self._relay.stdin:
                    self._relay.stdin.close()
                self._relay.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self._relay.kill()
                self._relay.wait()
            self._relay = None
        if self._up:
            for h in ("a", "b"):
                subprocess.run(["ip", "netns", "pids", self.ns[h]], capture_output=True)
                pids = subprocess.run(
                    ["ip", "netns", "pids", self.ns[h]], capture_output=True, text=True
                ).stdout
                for pid in pids.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                subprocess.run(["ip", "netns", "del", self.ns[h]], capture_output=True)
            self._up = False

    # -- the link --------------------------------------------------------------
    def set_link(self, link: Link) -> None:
        """Change rate, delay, jitter and loss of the running link."""
        self.link = link
        for h in ("a", "b"):
            tun = self.tun[h]
            if link.rate_bit_s:
                burst = max(4 * TUN_MTU, int(link.rate_bit_s / 8 / 250))  # >= one jiffy at HZ=250
                limit = max(2 * burst, int(link.rate_bit_s / 8 * link.queue_ms / 1000))
                self.run(h, ["tc", "qdisc", "replace", "dev", tun, "root", "tbf", "rate", f"{int(link.rate_bit_s)}bit",
                             "burst", str(burst), "limit", str(limit)])  # fmt: skip
            else:
                subprocess.run(["ip", "netns", "exec", self.ns[h], "tc", "qdisc", "del", "dev", tun, "root"],
                               capture_output=True)  # fmt: skip
            # loss where the packet arrives: a drop in the sender's OUTPUT chain would
            # tell the sender at once (EPERM), which no real link does
            self.run(h, ["iptables", "-F", "INPUT"])
            if link.loss:
                self.run(h, ["iptables", "-A", "INPUT", "-i", tun, "-m", "statistic", "--mode", "random",
                             "--probability", f"{link.loss:.6f}", "-j", "DROP"])  # fmt: skip
        if self._relay is not None and self._relay.stdin is not None:
            self._relay.stdin.write(
                json.dumps({"delay_s": link.rtt_ms / 2000, "jitter_s": link.jitter_ms / 1000}) + "\n"
            )
            self._relay.stdin.flush()

    def relay_stats(self) -> dict:
        assert self._relay is not None and self._relay.stdin is not None and self._relay.stdout is not None
        self._relay.stdin.write("stats\n")
        self._relay.stdin.flush()
        return json.loads(self._relay.stdout.readline())

    # -- running things in a host ---------------------------------------------
    def cmd(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *argv]

    def run(self, host: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("env", _same_env())
        r = subprocess.run(self.cmd(host, argv), **kw)
        if r.returncode != 0 and kw.get("check", True):
            raise TestbedError(f"{' '.join(argv)} in {host}: exit {r.returncode}: {(r.stderr or '').strip()}")
        return r

    def popen(self, host: str, argv: list[str], **kw) -> subprocess.Popen:
        kw.setdefault("env", _same_env())
        return subprocess.Popen(self.cmd(host, argv), **kw)

    # -- measuring the emulator itself ----------------------------------------
    def measure(self, *, seconds: float = 4.0, pings: int = 20) -> dict:
        """Measured RTT (ping), rate (iperf3 TCP a->b, 4 streams, loss off) and loss (iperf3 UDP a->b)."""
        out: dict = {"set": asdict(self.link)}
        p = self.run("a", ["ping", "-c", str(pings), "-i", "0.05", "-q", self.addr["b"]], check=False)
        rtt = [float(x) for x in p.stdout.rsplit("=", 1)[-1].split("/")[:3]] if "rtt" in p.stdout else None
        out["rtt_ms"] = {"min": rtt[0], "avg": rtt[1], "max": rtt[2]} if rtt else None
        if shutil.which("iperf3"):
            # the rate the link holds: TCP without the loss (lossy TCP measures TCP, not the
            # shaper), four streams, the first second (slow start) left out
            link = self.link
            self.set_link(replace(link, loss=0.0))
            srv = self.popen("b", ["iperf3", "-s", "-1", "-B", self.addr["b"]], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                time.sleep(0.5)
                r = self.run("a", ["iperf3", "-c", self.addr["b"], "-t", str(seconds), "-O", "1", "-P", "4", "-J"],
                             check=False)  # fmt: skip
                j = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
                out["rate_bit_s"] = j.get("end", {}).get("sum_received", {}).get("bits_per_second")
            finally:
                srv.kill()
                srv.wait()
                self.set_link(link)
            # loss: UDP below the rate (no queueing drops) in 8000-byte datagrams (one TUN
            # packet each, ~3 000 a second through the relay), counted by iperf3 itself
            rate = int(min(self.link.rate_bit_s / 4, 200e6)) if self.link.rate_bit_s else 200_000_000
            srv = self.popen("b", ["iperf3", "-s", "-1", "-B", self.addr["b"]], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
            try:
                time.sleep(0.5)
                r = self.run("a", ["iperf3", "-c", self.addr["b"], "-u", "-b", str(rate), "-l", "8000", "-t",
                                   str(seconds), "-J"], check=False)  # fmt: skip
                j = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
                s = j.get("end", {}).get("sum", {})
                n = s.get("packets") or 0
                out["loss"] = (s["lost_packets"] / n) if n else None
                out["loss_packets"] = n
                # the binomial standard error at the set loss: a few hundred drops are needed
                # before "within 10%" means anything at 0.1%
                out["loss_stderr"] = (self.link.loss * (1 - self.link.loss) / n) ** 0.5 if n else None
            finally:
                srv.kill()
                srv.wait()
        return out


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise TestbedError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")


def _same_env() -> dict:
    import dwcp

    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(dwcp.__file__)))
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
