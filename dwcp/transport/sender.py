"""The sending side of a transfer: N TCP streams pulling chunks from one queue.

Theory of operation
-------------------
``Sender.send(data, host, port, key)`` (``data``: a buffer, or a FileSource
that reads a file chunk by chunk; see dwcp.transport.source):

1. hashes the object, opens the control stream, says HELLO (key, size,
   digest (dwcp.digest), and the digest of the baseline we last sent this peer
   for this key, if we still hold it) and reads WELCOME: the mode (full / delta / pages), the token
   for data streams and the receiver's bitmap of chunks it already holds
   (resume).  In pages mode the receiver's per-page hashes follow.
2. puts every missing chunk index on a bounded MPMC queue and starts the
   streams (a fixed count, or ``auto``: the bandwidth-delay product over
   the per-stream window, then the online controller).  Each stream thread
   owns one connection: it takes a chunk (work stealing), encodes it (the
   HDE codec; kernels and zstd release the GIL, so streams encode in
   parallel), waits for the shared token bucket, sends it, and reads the
   receiver's ACK/NACKs on the same thread, keeping at most
   ``window_chunks`` unacknowledged.
3. A stream that fails or makes no progress for ``stall_timeout_s`` is
   closed, its unacknowledged chunks go back on the queue, and the monitor
   opens a replacement (bounded by ``max_stream_reconnects``).  A NACKed
   chunk (it failed verification at the receiver) is queued again; a delta
   chunk NACKed twice is resent in full.  Two failures end the whole
   transfer at once instead: the source cannot be read or changed size
   (SourceError), or the receiver refused the object: an ERROR with a code
   in ``REFUSALS`` on a data stream (its disk, its ACL, its limit), or any
   word on the control stream before DONE (the monitor watches it: a data
   stream's ERROR is lost when our next write hits the closed stream first).
4. When every chunk is acknowledged and the source still has its size,
   DONE on the control stream; the receiver verifies the whole object and
   commits it, and answers DONE.
5. Whether a send may go as a delta is the [codec] settings' call
   (``full_refresh_reason``): ``delta = false``, ``max_delta_chain``
   non-full sends since the key's last full one, or a last full send older
   than ``baseline_refresh_s`` make it full: HELLO then offers no baseline
   and leaves "xbzrle" and "pages" out of its caps, so the receiver picks
   "full".  The count and the time of the last full send are kept per key
   beside the baselines (``ObjectStore.write_meta``), so they survive a
   restart; a key with no record goes full once.  A sender without a
   baselines store keeps no record: only ``delta = false`` applies to it.
6. The sent version becomes our baseline for the next send of that key,
   kept only if it hashes to the digest the receiver verified (a file
   changed after its chunks went is not kept).  A file is cloned (FICLONE)
   or copied in the kernel (copy_file_range) and the copy hashed through a
   mapping; a buffer, or a file neither works for, is read again and written
   (``_remember``; the report's ``baseline`` says which).  A kept baseline
   that fails its digest when a delta needs it is removed with a warning,
   and that send's chunks go without a base.
7. A caller that keeps its previous versions itself names one (``base=``,
   ``dwcp send NEW --base OLD``): HELLO offers OLD's digest (cached by the
   file's identity beside the baselines: dwcp.transport.source.DigestCache)
   instead of the kept baseline's, delta chunks are against OLD's bytes,
   read as the chunks go, and nothing of NEW is kept; the key's delta chain
   (rule 5) is counted all the same.
8. A sender with a ``tune_dir`` looks up the ``dwcp tune`` profile of the
   NIC it reaches the peer through (while the object is hashed) and applies
   what the config leaves open: the stream counts, every stream's socket
   buffers (through the Dialer), the chunk size where no path was measured,
   the link rate, and where the NIC has several tx queues, each stream
   thread's CPU affinity to the CPUs of their IRQs (the decisions are
   dwcp.transport.nicplan's).  The report's ``nic`` says what was applied
   and why the rest was not.
9. Zero-copy send (``transport.zerocopy``): on a plaintext send whose
   control stream takes SO_ZEROCOPY, and whose peer is not reached over
   loopback, each data stream sends raw chunk payloads of 64 KiB and up with
   MSG_ZEROCOPY (dwcp.transport.zerocopy): the kernel sends them from the
   stream's own buffers instead of copying them into the socket.  A file is
   then read into a pool of buffers per stream, each reused only once the
   kernel said it let go of it; a compressed or delta payload, a header and
   a control message copy as before.  A stream that ends cleanly waits for
   its last completions.  On loopback the kernel copies every byte anyway
   (the receiving socket must own them) and MSG_ZEROCOPY only adds the
   completions' cost, so it is not used there (``zerocopy_loopback=True``
   forces it, for tests and benchmarks).  The report's ``socket`` says what
   happened: ``zerocopy_used``, the counts, and how many sends the kernel
   says it copied after all.
10. The engine (``transport.engine``, dwcp.transport.engine): a send starts
    its loops (``engine_loops``; io_uring or epoll pumps; none for
    ``threads``) with slots for the streams each may carry, and every data
    stream without MSG_ZEROCOPY takes one loop (round-robin) and hands it
    its payloads of 64 KiB and up -- plain ones from the source's buffer,
    sealed ones sealed a block at a time into the stream's slot and sent
    from there -- and sleeps without the GIL until the socket has taken
    them.  Headers below that, ACKs and control stay on the stream's thread.
    The pumps are closed when the streams end; ``socket.engine`` in the
    report says which engine, why, how many loops and the bytes they sent.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeGuard

from dwcp._backend import impl as _k
from dwcp.codec import ChunkEncoder, CodecConfig, DictionaryStore
from dwcp.codec.dictionaries import type_for
from dwcp.config import CodecSettings, SecurityConfig, TransportConfig
from dwcp.digest import chunk_hash, object_digest
from dwcp.errors import (
    AuthenticationError,
    BrokenResourceError,
    ConfigError,
    DWCPError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    TransferError,
)
from dwcp.security import aead
from dwcp.wire import consts as C
from dwcp.wire.messages import encode_control, encode_dict

from .dialer import Dialer
from .engine import Engine, default_loops, start_engine
from .events import NO_EVENTS, TransferEvents
from .framesock import FrameSocket
from .nicplan import LOOPBACK_LINK_BYTES_PER_S
from .session import (
    NACK_IGNORE,
    NACK_RESEND,
    CodecReport,
    DictionaryReport,
    DictRef,
    Forward,
    SendSession,
    StreamsReport,
    TransferReport,
)
from .source import BufferSource, FileSource, SourceChangedError, SourceError, as_source
from .tcpinfo import read_tcp_info
from .trace import SAMPLE_S

if TYPE_CHECKING:
    from .anomaly import PathWatch
    from .trace import PathForecast, PathTrace, SendRecord
from .window import StreamWindow
from .zerocopy import ZEROCOPY_MIN_BYTES, PayloadBuffers

__all__ = ["Sender", "TransferError", "expect", "full_refresh_reason"]

log = logging.getLogger("dwcp.sender")


# ERROR codes on a data stream that end the whole transfer: the receiver refused the object itself
# (its disk, its ACL, its size limit), so a new stream would be refused too.  Any other code costs
# the stream only: its chunks are requeued on a replacement.
REFUSALS = frozenset({C.ERR_STORAGE, C.ERR_FORBIDDEN, C.ERR_TOO_LARGE})


def _ends_transfer(exc: BaseException) -> TypeGuard[SourceError | TransferError]:
    """True for a stream thread's error that no other stream would avoid: the local source failed,
    or the receiver refused the object."""
    return isinstance(exc, SourceError) or (isinstance(exc, TransferError) and exc.code in REFUSALS)


def _pow2(n: int) -> int:
    return 1 << max(1, (n - 1).bit_length())


def _is_loopback(host: str) -> bool:
    try:
        import ipaddress

        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _egress_is_loopback(sock: Any, interface: str | None) -> bool:
    """Whether the connected ``sock`` sends through the loopback device: to a loopback address, to one of
    this host's own (the kernel routes those through ``lo``, from that very address), or pinned to ``lo``.

    (Read off the connected socket: ``dwcp.tune.egress_nic`` asks netlink through pyroute2, ~0.2 s to
    import.  A source_address bound to another of this host's addresses hides a local peer from it.)
    """
    import ipaddress

    if interface == "lo":
        return True
    try:
        peer, local = sock.getpeername()[0], sock.getsockname()[0]
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except (OSError, ValueError):
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or peer == local or (mapped is not None and mapped.is_loopback)


def _zerocopy_reason(zc: dict[str, int], loopback: bool) -> str:
    """What the data streams did with MSG_ZEROCOPY, for the report's ``zerocopy_reason``."""
    kib = ZEROCOPY_MIN_BYTES >> 10
    if not zc["sends"]:
        why = (f"MSG_ZEROCOPY on raw chunk payloads of {kib} KiB and up; none went that way "
               "(every chunk was compressed, a delta, or smaller)")  # fmt: skip
    else:
        calls, copied = zc["calls"], zc["copied"]
        why = f"MSG_ZEROCOPY on {zc['sends']} payloads ({calls} sendmsg calls); "
        if copied and copied >= zc["completions"]:
            why += "the kernel copied all of them"
            why += (" (loopback always copies)" if loopback
                    else " (the egress device cannot send from user pages, or the peer is local)")  # fmt: skip
        elif copied:
            why += f"the kernel copied {copied} of them"
        else:
            why += "the kernel copied none of them"
        if zc["completions"] < calls:
            why += f"; {zc['completions']} of the {calls} completions came (a stream ended early)"
    if zc["fallbacks"]:
        why += f"; {zc['fallbacks']} payloads copied instead (ENOBUFS with none outstanding, or refused)"
    return why


def expect(fs: FrameSocket, frame_type: int) -> dict:
    """The next control message of ``frame_type`` on ``fs``; the peer's ERROR is a TransferError with its words."""
    got = fs.recv_control(frame_type)
    if got is None:
        raise BrokenResourceError("receiver closed the control stream")
    h, msg = got
    if h.frame_type == C.FRAME_ERROR:
        raise TransferError.refused(msg["message"], msg["code"])
    return msg


def expect_welcome(fs: FrameSocket, target: str) -> dict:
    """WELCOME, a peer's first answer; a peer that closes or alerts instead is named, with the likely
    reason (a TLS daemon met in plaintext, a certificate its CA does not know) as an AuthenticationError."""
    import ssl

    try:
        return expect(fs, C.FRAME_WELCOME)
    except ssl.SSLError as exc:  # TLS 1.3: a client learns on its first read that its certificate was refused
        raise AuthenticationError(f"{target} refused our certificate ({exc.reason or exc}) -- was it issued by the "
                                  "CA that peer trusts (its security.ca_cert)?") from exc  # fmt: skip
    except (BrokenResourceError, ConnectionResetError) as exc:
        if fs.tls:
            hint = "did it refuse our certificate (issued by another CA?), or is it shutting down?"
        else:
            hint = "is it a mutual-TLS daemon? this side is plaintext (--plaintext, security.plaintext)"
        raise AuthenticationError(f"{target} closed the connection instead of answering -- {hint}") from exc


def _chain(record: dict | None) -> tuple[int, float] | None:
    """(non-full sends since the last full one, when that began) of a key's record; None if it has none."""
    deltas, full_at = (record or {}).get("deltas"), (record or {}).get("full_at")
    if not isinstance(deltas, int) or isinstance(deltas, bool) or deltas < 0 or isinstance(full_at, bool) \
            or not isinstance(full_at, int | float):  # fmt: skip
        return None
    return deltas, float(full_at)


def full_refresh_reason(
    codec: CodecSettings, record: dict | None, now: float, *, tracked: bool = True
) -> str | None:
    """Why the next send of a key must go full, or None when it may go as a delta (or pages).

    ``record`` is the key's ``{"deltas": non-full sends since the last full one, "full_at": when that
    full send started (``now``'s clock, Unix seconds)}``, or None when none is kept; ``tracked`` is
    False for a sender that keeps no records (only ``codec.delta`` applies then).
    """
    if not codec.delta:
        return "codec.delta = false"
    if not tracked:
        return None
    chain = _chain(record)
    if chain is None:
        return "no full send of this key recorded"
    deltas, full_at = chain
    if deltas >= codec.max_delta_chain:
        return f"codec.max_delta_chain = {codec.max_delta_chain}: {deltas} non-full sends since the last full one"
    age = now - full_at
    if not 0 <= age < codec.baseline_refresh_s:
        return f"codec.baseline_refresh_s = {codec.baseline_refresh_s:g}: the last full send began {age:.0f} s ago"
    return None


# --streams auto on a link of unknown speed: a long path needs several streams and
# extra ones on a short path cost little (perf/sla.py: 4-8 streams within 2% of each
# other at 50 ms), so start here and let the controller probe either way
UNKNOWN_LINK_STREAMS = 4


def _percentiles(xs: list[float]) -> dict[str, float] | None:
    """p50/p99/max of ``xs`` (seconds) in milliseconds; None when empty."""
    if not xs:
        return None
    s = sorted(xs)
    return {"p50": s[len(s) // 2] * 1000, "p99": s[min(len(s) - 1, math.ceil(0.99 * len(s)) - 1)] * 1000,
            "max": s[-1] * 1000, "n": len(s)}  # fmt: skip


def _capture(box: list, fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn`` (in a thread) and put (True, its result) or (False, its exception) in ``box``."""
    try:
        box.append((True, fn(*args)))
    except BaseException as exc:
        box.append((False, exc))


def _tcp_counters(sock: Any) -> tuple[int, int, int, int] | None:
    info = read_tcp_info(sock)
    if info is None or info.bytes_acked is None or info.bytes_sent is None or info.bytes_retrans is None:
        return None
    return info.bytes_acked, info.bytes_sent, info.bytes_retrans, info.rtt_us


@dataclass
class _State:
    """What the streams of one send share besides the protocol's state (that is the SendSession's):
    the stream count, stream failures, TCP counters and latencies, and the event that ends the wait."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    target_streams: int = 1
    active_streams: int = 0  # streams taking work (a retired stream drains without counting)
    stream_failures: int = 0
    stream_errors: list[str] = field(default_factory=list)
    stream_info: list[dict] = field(default_factory=list)  # TCP_INFO of each stream as it ended
    # The controller's view of the streams' TCP progress (``tcp_totals``): the live streams' sockets,
    # registered by their threads and read by the controller's loop, both under ``lock`` (so a socket
    # is never read after its thread closed it), and the summed last counters of the streams that ended.
    tcp_socks: dict[int, Any] = field(default_factory=dict)
    tcp_ended: list[int] = field(default_factory=lambda: [0, 0, 0])  # bytes acked, sent, retransmitted
    tcp_counters_missing: bool = False  # a socket without TCP_INFO's byte counters (not Linux >= 4.19)
    chunk_latency_s: list[float] = field(default_factory=list)  # send -> ACK of each acknowledged chunk
    # MSG_ZEROCOPY counts summed over the streams as they end (rule 9; keys as ``_zerocopy_reason`` reads)
    zerocopy: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("sends", "calls", "completions", "copied", "fallbacks", "enobufs", "buffer_waits"), 0))  # fmt: skip
    all_done: threading.Event = field(default_factory=threading.Event)  # set once the session is finished
    pinned_threads: int = 0  # stream threads pinned to the NIC's tx IRQ CPUs (rule 8)
    pin_error: str | None = None  # the first sched_setaffinity failure
    rtt_s: float | None = None  # the live streams' median smoothed RTT, as ``tcp_totals`` last read it

    def tcp_register(self, sid: int, sock: Any) -> None:
        with self.lock:
            self.tcp_socks[sid] = sock

    def tcp_unregister(self, sid: int) -> None:
        """Before the stream's socket closes: keep its last counters."""
        with self.lock:
            sock = self.tcp_socks.pop(sid, None)
            c = None if sock is None else _tcp_counters(sock)
            if c is not None:
                for k in range(3):
                    self.tcp_ended[k] += c[k]
            elif sock is not None:
                self.tcp_counters_missing = True

    def tcp_totals(self) -> tuple[int, int, int] | None:
        """(bytes acked, sent, retransmitted) by TCP over every stream so far, or None without the counters.

        Acknowledged bytes grow with every ACK: the controller's goodput signal.  Counting whole
        chunks as the receiver acknowledges them is too coarse for it: at 16 streams of 4 MiB
        chunks on a 1 Gbit/s, 1%-loss path a stream completes a chunk every ~0.7 s, so half a
        second's count of chunk ACKs swings by tens of percent with no change in the rate.
        """
        with self.lock:
            if self.tcp_counters_missing:
                return None
            tot = list(self.tcp_ended)
            rtts = []
            for sock in self.tcp_socks.values():
                c = _tcp_counters(sock)
                if c is None:
                    return None
                for k in range(3):
                    tot[k] += c[k]
                if c[3]:
                    rtts.append(c[3])
            rtts.sort()
            self.rtt_s = rtts[len(rtts) // 2] / 1e6 if rtts else None
        return tot[0], tot[1], tot[2]


class Sender:
    def __init__(
        self,
        transport: TransportConfig,
        security: SecurityConfig,
        *,
        node_id: str = "node",
        baselines=None,
        events: TransferEvents | None = None,
        tune_dir: str | None = None,
        path_dir: str | None = None,
        codec: CodecSettings | None = None,
        clock: Callable[[], float] = time.time,
        dictionaries: DictionaryStore | None = None,
        zerocopy_loopback: bool = False,
    ) -> None:
        """``baselines``: an ObjectStore where sent versions are kept for the next delta (None: no deltas).

        ``codec``: the [codec] settings (zstd level, deltas and their refresh; see
        ``full_refresh_reason``); default: CodecSettings().  ``clock`` gives Unix
        seconds for ``baseline_refresh_s`` (tests pass a fake one).
        ``dictionaries``: this node's zstd dictionaries; a key a [[codec.dictionary]] rule maps to a
        type compresses with that type's (dwcp.codec.dictionaries).  None: no dictionaries.

        ``events`` receives what the sends do (metrics); see dwcp.transport.events.
        ``tune_dir``: where `dwcp tune --apply` wrote NIC profiles; a send whose
        egress NIC has one applies what the config leaves open (rule 8).
        ``path_dir``: where what each send measured of its path is kept, a trace per path
        (``traces/``, see dwcp.transport.trace), and forecast from for the next send; default:
        the baselines' directory; None without baselines: nothing kept.
        ``zerocopy_loopback``: use MSG_ZEROCOPY (``transport.zerocopy``) on loopback too, where the kernel
        copies anyway (rule 9): for tests and benchmarks of that path.
        """
        from .trace import PathTraces

        self.tune_dir = tune_dir
        pd = path_dir if path_dir is not None else getattr(baselines, "data_dir", None)
        self.paths: PathTraces | None = PathTraces(pd) if pd else None
        self.events = events if events is not None else NO_EVENTS
        self.transport = transport
        self.security = security
        self.node_id = node_id
        self.baselines = baselines
        self.codec = codec if codec is not None else CodecSettings()
        self.clock = clock
        self.dictionaries = dictionaries
        self.zerocopy_loopback = zerocopy_loopback
        # limiters of running sends whose rate comes from the config (a reload changes them)
        self._config_limiters: weakref.WeakSet = weakref.WeakSet()
        self.dialer = Dialer(transport, security)  # every stream of every send connects through it

    def reconfigure(self, transport: TransportConfig, codec: CodecSettings | None = None) -> None:
        """New sends use ``transport`` (and ``codec``, if given); running sends capped by the config get
        its new rate now."""
        self.transport = transport
        self.dialer.reconfigure(transport)
        if codec is not None:
            self.codec = codec
        for lim in list(self._config_limiters):
            lim.set_rate(transport.rate_limit_bytes_per_s or None)

    # -- the whole transfer ------------------------------------------------
    def send(
        self,
        data,
        host: str,
        port: int,
        key: str,
        *,
        streams: int | None = None,
        rate_limit_bytes_per_s: float | None = None,
        resource_type: str | None = None,
        progress=None,
        digest: bytes | None = None,
        ready: Callable[[int, float], bool] | None = None,
        forward_to: str | Forward | None = None,
        base: FileSource | str | os.PathLike | None = None,
        origin: dict | None = None,
    ) -> TransferReport:
        """Send ``data`` as ``key``: any contiguous buffer (bytes, mmap, numpy array; never copied), or a
        FileSource (a file or block device, read chunk by chunk; see dwcp.transport.source).

        ``streams``: a fixed stream count, or None for auto.  ``progress``, if
        given, is called as ``progress(acked_bytes, total_bytes)`` a few times a
        second from the calling thread.  Returns the transfer's statistics (a
        TransferReport); raises TransferError on failure.

        Relaying: ``digest`` (the object's digest, when the caller already
        knows it) skips hashing ``data`` up front; ``ready(i, timeout_s)`` is
        asked before chunk ``i`` is read and must return True once its bytes
        are in ``data`` (a relay forwards chunks as they land); ``forward_to``
        (HOST:PORT) asks the receiver to relay the object on, pipelined, and to
        answer only once the final receiver has verified and stored it; a
        ``Forward`` with ``then``/``ack`` asks it to replicate along a chain
        (the report's ``relayed["hops"]`` says who verified a copy).

        ``base``: the caller's previous version of this object (a FileSource, or a path), which it
        keeps itself (snapshot workflows; ``dwcp send NEW --base OLD``).  Its digest is offered as
        the delta baseline instead of the baselines store's, deltas are against its bytes, and the
        sent version is not kept (rule 7).  A receiver that lacks it picks "full" or "pages".

        ``origin``: {"writer", "hlc", "parent"}, what the receivers record in the catalog with the
        version (dwcp.consensus.catalog: conflicts between concurrent writers).
        """
        from dwcp.storage import validate_key

        key = validate_key(key)
        own_base = None
        if base is not None and not isinstance(base, FileSource):
            base = own_base = FileSource.open(os.fspath(base))
        t_start = time.perf_counter()
        try:
            try:
                r = self._send(data, host, port, key, t_start, streams, rate_limit_bytes_per_s, resource_type,
                               progress, digest, ready, forward_to, base, origin)  # fmt: skip
            except SourceError as exc:
                # raised before DONE (once the receiver commits, the source is only read to keep a baseline)
                err = type(exc)(f"{exc}; nothing was stored")
                err.stats = exc.stats
                raise err from exc
            except (
                BrokenResourceError
            ) as exc:  # the connection went mid-transfer: name the peer, and the way on
                lost = BrokenResourceError(f"{host}:{port}: {exc} -- did its daemon restart or the network drop? "
                                           "sending again resumes from the chunks it holds")  # fmt: skip
                lost.stats = getattr(exc, "stats", {})  # type: ignore[attr-defined]
                raise lost from exc
        except BaseException as exc:
            st = getattr(exc, "stats", {})
            if isinstance(exc, TransferError) and exc.code is not None:
                outcome = "integrity" if exc.code == C.ERR_CHECKSUM else "refused"
            else:
                outcome = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.events.transfer_finished("tx", f"{host}:{port}", outcome, time.perf_counter() - t_start, 0,
                                          st.get("wire_bytes", 0))  # fmt: skip
            raise
        finally:
            if own_base is not None:
                own_base.close()
        self.events.transfer_finished("tx", r.to, "ok", r.seconds, r.size, r.wire_bytes)
        return r

    def _send(self, data, host: str, port: int, key: str, t_start: float, streams: int | None,
              rate_limit_bytes_per_s: float | None, resource_type: str | None, progress, known_digest: bytes | None,
              ready, forward_to: str | Forward | None, base_src: FileSource | None,
              origin: dict | None = None) -> TransferReport:  # fmt: skip
        from .ratelimit import RateLimiter, TokenBucket

        src = as_source(data)
        tp = self.transport
        cs = self.codec  # one send, one set of settings (a reload swaps the attribute)
        if streams is not None and not 1 <= streams <= 256:
            raise ValueError(f"streams must be in [1, 256], got {streams}")
        size = src.size
        # the egress NIC's profile (rule 8): looking up the NIC imports pyroute2 (~0.2 s, 2% of a 1 GiB
        # send at 1 Gbit/s), so it runs while the digest is computed (GIL released); the chunk size and
        # the control stream's buffers need it before the HELLO
        prof_box: list = []
        prof_thread = None
        if self.tune_dir:
            prof_thread = threading.Thread(target=_capture, args=(prof_box, self._nic_profile, host),
                                           name="dwcp-nic-profile", daemon=True)  # fmt: skip
            prof_thread.start()
        # the digest (a read of the whole source) runs while the NIC profile is looked up and the control
        # stream connects: HELLO is the first thing that needs it (on a WAN, the connect's RTT is hidden)
        digest_box: list = []
        digest_thread = None
        if known_digest is None:
            digest_thread = threading.Thread(target=_capture, args=(digest_box, src.digest), name="dwcp-digest",
                                             daemon=True)  # fmt: skip
            digest_thread.start()
        try:
            peer_addr = f"{host}:{port}"
            trace = fc = path = None
            used: dict[str, Any] = {}  # what the forecast set, for the report
            if self.paths is not None:
                from .trace import route_nic

                trace = self.paths.load(peer_addr, tp.interface or route_nic(host))
                if tp.adaptive_chunks:  # the forecast of this path from its trace (trace rule 4)
                    fc = trace.forecast(now=time.time())
                    path = fc.stats() if fc is not None else None
            fresh = path is not None and time.time() - path.at < 86400.0  # its count still says something
            loopback = _is_loopback(host)
            plan = None
            if prof_thread is not None:
                prof_thread.join()
                ok, prof = prof_box[0]
                if not ok:
                    raise prof
                if prof is not None:
                    plan = self._nic_plan(prof, streams, path, fresh, peer_addr, loopback)
            # the cap on this send: an explicit one (--rate, a repair's rate), else the config's (reloadable)
            rate_cap = (
                rate_limit_bytes_per_s if rate_limit_bytes_per_s is not None else tp.rate_limit_bytes_per_s
            )
            if plan is not None and plan.chunk_size_bytes:
                chunk_size = plan.chunk_size_bytes
                chunk_why = f"{chunk_size >> 10} KiB (the `dwcp tune` profile of {plan.nic}; no earlier send to this peer)"
            elif tp.adaptive_chunks:
                from .chunking import choose_chunk_size

                chunk_size, chunk_why = choose_chunk_size(path, tp.chunk_size_bytes, now=time.time(),
                                                          rate_cap=rate_cap or None)  # fmt: skip
                if path is not None and fc is not None and path.at == fc.last_at:
                    used["chunk_size"] = chunk_size
                    chunk_why += f"; forecast from {fc.n} send{'s' * (fc.n != 1)} of this path"
            else:
                chunk_size, chunk_why = tp.chunk_size_bytes, f"{tp.chunk_size_bytes >> 10} KiB (fixed)"
            buffer_bytes = plan.socket_buffer_bytes if plan is not None else None
            cache_key = f"{host}:{port}/{key}"
            now = self.clock()
            record = self.baselines.read_meta(cache_key) if self.baselines is not None else None
            refresh = full_refresh_reason(cs, record, now, tracked=self.baselines is not None)
            base_info = None  # the kept baseline offered (rule 6), or
            caller_base: bytes | None = None  # the digest of the caller's previous version (rule 7)
            if refresh is None and base_src is not None:
                if base_src.size == size:
                    caller_base = self._caller_digest(base_src)
            elif refresh is None and self.baselines is not None:
                base_info = self.baselines.latest(cache_key)
                if base_info is not None and base_info.size != size:
                    base_info = None
            offered = base_info.digest if base_info is not None else caller_base
            transfer_id = secrets.randbits(63) | 1
            dictionary = self._dictionary_for(key, resource_type)

            ctrl, sockinfo = self.dialer.dial(host, port, buffer_bytes=buffer_bytes)
        except BaseException:
            if digest_thread is not None:
                digest_thread.join()  # not left reading a source its caller is about to close
            raise
        if digest_thread is not None:
            digest_thread.join()
            ok, got = digest_box[0]
            if not ok:
                ctrl.close()
                raise got
            digest: bytes = got
        else:
            assert known_digest is not None
            digest = known_digest
        from .sockopts import probe_zerocopy

        # rule 9: MSG_ZEROCOPY pays only where the kernel would otherwise copy into the socket; TLS
        # encrypts in user space (a copy anyway) and loopback copies to the receiving socket regardless
        zerocopy = False
        loopback = _egress_is_loopback(ctrl.sock, tp.interface or None)
        if not tp.zerocopy:
            sockinfo["zerocopy_available"] = None
            sockinfo["zerocopy_reason"] = "transport.zerocopy = false: not probed"
        elif self.dialer.tls is not None:
            sockinfo["zerocopy_available"] = False
            sockinfo["zerocopy_reason"] = "TLS encrypts in user space"
        else:
            sockinfo["zerocopy_available"] = probe_zerocopy(ctrl.sock)
            if not sockinfo["zerocopy_available"]:
                sockinfo["zerocopy_reason"] = "SO_ZEROCOPY refused (Linux < 4.14?): every send copies"
            elif loopback and not self.zerocopy_loopback:
                sockinfo["zerocopy_reason"] = (
                    "the peer is reached over loopback, where the kernel copies anyway and MSG_ZEROCOPY "
                    "would only add completion overhead: every send copies")  # fmt: skip
            else:
                zerocopy = True
        sockinfo["zerocopy_used"] = False
        base_map = None
        # a full send due (refresh): no baseline offered, and no "pages" either (the receiver's own delta)
        sess = SendSession(transfer_id, key, size, digest, chunk_size, node=self.node_id,
                           base_digest=offered,
                           full_refresh=refresh is not None, forward_to=forward_to, streams=streams, origin=origin,
                           dictionary=DictRef(dictionary.id, dictionary.digest, len(dictionary.data))
                           if dictionary is not None else None,
                           sealed=self._can_seal(ctrl))  # fmt: skip
        try:
            ctrl.send(encode_control(C.FRAME_HELLO, transfer_id, sess.hello()))
            todo = sess.on_welcome(expect_welcome(ctrl, f"{host}:{port}"))
            sockinfo["records"], sockinfo["records_reason"] = self._records(ctrl, sess)
            if sess.dict_needed:  # session rule 13: before any data stream opens
                assert dictionary is not None
                ctrl.send(encode_dict(transfer_id, dictionary.id, dictionary.data))
                sess.dictionary_sent()
            mode = sess.mode
            assert mode is not None  # on_welcome judged it
            if sess.chunk_size != chunk_size:
                # the receiver holds part of this object in the chunks of an earlier attempt: use those
                chunk_size = sess.chunk_size
                chunk_why = f"{chunk_size >> 10} KiB: the receiver's partial from an interrupted send"
            spans = sess.spans
            base: BufferSource | FileSource | None = None
            base_digest = None
            peer_hashes = None
            if mode == "delta" and caller_base is not None:
                assert base_src is not None  # the session checked WELCOME named the baseline we offered
                base, base_digest = base_src, caller_base  # read as the chunks go, as the source is
            elif mode == "delta":
                assert base_info is not None
                base_map = memoryview(self.baselines.open_version(base_info))
                if object_digest(base_map) == base_info.digest:
                    base, base_digest = BufferSource(base_map), base_info.digest
                else:
                    # our copy rotted: never delta against it.  Drop it and send every chunk without a
                    # base: the receiver takes any non-delta codec in a delta transfer
                    base_map.release()
                    base_map = None
                    self._drop_baseline(base_info)
            elif mode == "pages":
                base_digest = sess.base_digest
                peer_hashes = self._recv_page_hashes(ctrl, (size + C.PAGE_SIZE - 1) // C.PAGE_SIZE)

            state = _State()
            resumed = sess.resumed
            q = _k.MPMCQueue(_pow2(max(2, len(spans))))
            for i in todo:
                if not q.try_put(i):
                    raise LocalProtocolError("work queue full", 0)

            link = (
                tp.link_bytes_per_s
                or (LOOPBACK_LINK_BYTES_PER_S if loopback else 0.0)
                or ((plan.link_bytes_per_s or 0.0) if plan is not None else 0.0)
            )
            link_why = "configured, loopback or the NIC profile" if link else "unknown"
            if not link and fresh and fc is not None and fc.value("goodput") > 0:
                # the rate the path is forecast to deliver: what compression must beat, and the BDP
                link = fc.value("goodput")
                link_why = f"forecast goodput ({fc.why('goodput')})"
                used["link_bytes_per_s"] = round(link)
            sockinfo["link_bytes_per_s"], sockinfo["link_reason"] = round(link), link_why
            rtt_s = self._rtt_s(ctrl)
            if plan is not None:  # a profile buffer too small for the measured path is not set
                plan = plan.for_path(rtt_s, tp.link_bytes_per_s or plan.link_bytes_per_s)
                buffer_bytes = plan.socket_buffer_bytes
            decisions: list[dict] = []
            if streams is None:
                from .controller import StreamController, initial_streams

                max_streams = plan.max_streams if plan is not None and plan.max_streams else tp.max_streams
                if tp.initial_streams:
                    n0, why = tp.initial_streams, f"initial_streams={tp.initial_streams} from the config"
                elif fresh and fc is not None:
                    n0 = fc.streams(tp.min_streams, max_streams)
                    why = (f"forecast for {peer_addr}: {fc.value('streams'):.1f} streams at the end of the next send "
                           f"({fc.why('streams')})")  # fmt: skip
                    used["streams_initial"] = n0
                elif plan is not None and plan.initial_streams:
                    n0, why = (
                        plan.initial_streams,
                        f"initial_streams={plan.initial_streams} from the profile of {plan.nic}",
                    )
                else:
                    n0, why = initial_streams(link or None, rtt_s, tp.per_stream_window_bytes, tp.min_streams,
                                              max_streams, unknown_start=UNKNOWN_LINK_STREAMS)  # fmt: skip
                # rule 6 of the controller: a loss-based congestion control is rate-limited by loss per stream
                cc = sockinfo.get("congestion") or "cubic"
                controller = StreamController(n0, tp.min_streams, max_streams, loss_based=not cc.startswith("bbr"),
                                              forecast="streams_initial" in used)  # fmt: skip
            else:
                n0, why, controller = streams, f"fixed at {streams} by the caller", None
            n0 = max(1, min(n0, max(1, len(todo))))
            decisions.append({"t": 0.0, "streams": n0, "reason": why})
            state.target_streams = n0
            if not todo:
                state.all_done.set()

            encoder = ChunkEncoder(CodecConfig.from_settings(cs, link_rate_bytes_per_s=link or 1.25e9,
                                                             compress_workers=tp.encode_workers))  # fmt: skip
            limiter = None
            if rate_cap or rate_limit_bytes_per_s is None:
                # a config-driven cap (even "none" now) follows reloads; an explicit --rate does not
                limiter = RateLimiter(
                    TokenBucket(rate_cap or None, max(chunk_size, int((rate_cap or 0) * 0.05)))
                )
                if rate_limit_bytes_per_s is None:
                    self._config_limiters.add(limiter)
            bdp = int(link * rtt_s) if link else None
            ctx = _StreamCtx(self, host, port, sess, state, q, src, base, base_digest, peer_hashes, encoder, limiter,
                             bdp, dictionary)  # fmt: skip
            ctx.ready = ready
            ctx.chunk_bytes = chunk_size
            ctx.buffer_bytes = buffer_bytes
            ctx.cpus = plan.cpus if plan is not None else None
            ctx.zerocopy = zerocopy
            ctx.trace = trace
            if trace is not None and mode != "delta":  # a delta's few small chunks say little of the path
                from .anomaly import PathWatch

                ctx.watch = PathWatch()
            wall_start = time.time()
            # rule 10: the loops send every stream's large payloads (not the MSG_ZEROCOPY ones), with a
            # slot for each stream a loop may carry at once
            loops = tp.engine_loops or default_loops()
            slots = min(64, -(-tp.max_streams // loops))
            engine = start_engine(tp.engine, slots, loops=loops, register=False)
            ctx.engine = engine
            if tp.engine_cpus:  # the setting, else rule 8: the NIC's CPUs
                engine.pin(tp.engine_cpus, "the send's", "transport.engine_cpus")
            elif ctx.cpus:
                engine.pin(ctx.cpus, "the send's", f"the tx-queue IRQ CPUs of {plan.nic if plan else '?'}")
            else:
                skipped = plan.skipped.get("cpu_affinity") if plan is not None else None
                engine.pin(
                    None,
                    "the send's",
                    f"not pinned: {skipped or 'no `dwcp tune` profile for the egress NIC'}",
                )
            try:
                max_streams_seen = self._run_streams(ctx, ctrl, n0, controller, decisions, t_start, progress)
            finally:
                sockinfo["engine"] = engine.info()
                engine.close()
            if zerocopy:
                zc = dict(state.zerocopy)
                sockinfo["zerocopy_used"] = zc["sends"] > 0
                sockinfo.update({f"zerocopy_{k}": v for k, v in zc.items()})
                sockinfo["zerocopy_reason"] = _zerocopy_reason(zc, loopback)
            if sess.failed:
                err = (
                    sess.error
                    if isinstance(sess.error, SourceError | TransferError)
                    else TransferError(sess.failed)
                )
                err.stats = {"chunks": len(spans), "chunks_sent": sess.chunks_sent, "wire_bytes": sess.wire_bytes,
                             "chunks_acked": len(spans) - sess.remaining, "resumed_chunks": resumed}  # fmt: skip
                raise err
            src.check()  # a file that grew or shrank since the digest: the receiver must not commit it
            ctrl.send(encode_control(C.FRAME_DONE, transfer_id, sess.done()))
            # the receiver re-reads the whole object for its digest and fsyncs it:
            # allow for that at a conservative 100 MB/s on top of the stall timeout
            # (a relay answers once the next hop has it too: allow for a slower second hop)
            ctrl.sock.settimeout(tp.stall_timeout_s + size / (10e6 if forward_to else 100e6))
            done = expect(ctrl, C.FRAME_DONE)
            try:
                sess.on_done(done)
            except RemoteProtocolError as exc:
                raise TransferError(str(exc)) from exc
            try:
                ctrl.send(encode_control(C.FRAME_CLOSE, transfer_id, sess.close()))
            except OSError:
                pass
        finally:
            ctrl.close()
            if base_map is not None:
                base_map.release()
        elapsed = time.perf_counter() - t_start
        chain = None
        kept = None
        if base_src is not None:
            kept = "caller"  # it keeps its own versions: nothing to keep here (rule 7)
        elif self.baselines is not None:
            kept = self._remember(cache_key, src, digest, spans, chunk_size)
        if self.baselines is not None:
            chain = self._count_chain(cache_key, mode, record, now)
        wire = sess.wire_bytes
        samples = [] if controller is None else [
            (round(e.now - t_start, 3), e.streams, round(e.goodput_bytes_per_s),
             None if e.retransmit_rate is None else round(e.retransmit_rate, 5))
            for e in list(controller.history)[-512:]]  # fmt: skip
        result = TransferReport(
            key=key, to=f"{host}:{port}", mode=mode, size=size, digest=digest.hex(), verified=True,
            wire_bytes=wire, ratio=(size / wire) if wire else math.inf, seconds=elapsed,
            throughput_bytes_per_s=size / elapsed if elapsed > 0 else 0.0,
            chunks=len(spans), chunk_size=chunk_size, chunk_size_reason=chunk_why,
            chunks_sent=sess.chunks_sent, chunks_resent=sess.chunks_resent,
            resumed_chunks=resumed, stream_errors=tuple(state.stream_errors[:20]),
            streams=StreamsReport(initial=n0, max=max_streams_seen, final=state.target_streams,
                                  auto=controller is not None, decisions=tuple(decisions), samples=tuple(samples)),
            rtt_ms=rtt_s * 1000, tls=self.dialer.tls is not None, socket=sockinfo,
            chunk_latency_ms=_percentiles(state.chunk_latency_s),
            nic=self._nic_report(plan, state),
            relayed=done.get("forwarded"),
            tcp_info=tuple(state.stream_info[:64]),
            refresh=refresh, delta_chain=chain, baseline=kept,
            dictionary=None if dictionary is None else DictionaryReport(type=dictionary.type, id=dictionary.id,
                                                                        sent=sess.dict_needed),
            codec=CodecReport(zstd_level=cs.zstd_level or "adaptive",
                              zstd_levels_used=dict(sorted(encoder.levels.used.items())),
                              compress_workers=tp.encode_workers, encodes_at_once_max=encoder.peak_concurrent),
        )  # fmt: skip
        if trace is not None:
            result = self._record_path(ctx, result, fc, used, wall_start)
        return result

    # -- the path's trace, forecast and watch (dwcp.transport.trace, .anomaly) --------------------
    def _sample(self, ctx: _StreamCtx, goodput: float, rr: float | None) -> None:
        """One interval's sample: into the send's rows, and through the path's anomaly detectors."""
        from .trace import MAX_SAMPLES

        state, sess = ctx.state, ctx.sess
        t, rtt = time.time(), state.rtt_s
        ctx.samples.append([round(t, 3), round(goodput), None if rtt is None else round(rtt, 6),
                            None if rr is None else round(rr, 6), state.target_streams, ctx.chunk_bytes])  # fmt: skip
        if len(ctx.samples) > MAX_SAMPLES:
            del ctx.samples[0]
        # the tail: with fewer chunks left than streams, streams go idle as theirs finish -- no anomaly
        if ctx.watch is None or sess.remaining < max(2, state.target_streams):
            return
        raised = ctx.watch.observe(t, goodput=goodput, rtt_s=rtt, retrans=rr)
        if not raised:
            return
        assert ctx.trace is not None
        for a in raised:
            log.warning("path to %s via %s: %s", ctx.peer, ctx.trace.nic, a.detail)
            ctx.anomalies.append(a.to_json())
            self.events.path_anomaly(ctx.peer, ctx.trace.nic, a.signal)
        # written now, not at the end: a health check reading the traces sees it within the interval
        self._save_trace(ctx, None)

    def _save_trace(self, ctx: _StreamCtx, record: SendRecord | None) -> None:
        from .trace import PathTrace

        t = ctx.trace
        assert t is not None and self.paths is not None
        out = PathTrace(t.peer, t.nic, t.sends + ([record] if record is not None else []),
                        t.samples + ctx.samples if ctx.watch is not None else t.samples,
                        t.anomalies + ctx.anomalies)  # fmt: skip
        self.paths.save(out)

    def _record_path(self, ctx: _StreamCtx, result: TransferReport, fc: PathForecast | None, used: dict,
                     wall_start: float) -> TransferReport:  # fmt: skip
        """Trace rule 1: the send's record and samples into the path's trace; the report's ``path``."""
        from .chunking import path_stats_from_send
        from .trace import SendRecord, settle_time

        t = ctx.trace
        assert t is not None
        settle = settle_time(ctx.samples, start=wall_start)
        ps = path_stats_from_send(result, now=time.time()) if result.mode != "delta" else None
        record = None
        if ps is not None:
            record = SendRecord(at=ps.at, seconds=result.seconds, bytes=result.size,
                                goodput=result.throughput_bytes_per_s, stream_bytes_per_s=ps.stream_bytes_per_s,
                                rtt_s=ps.rtt_s, retrans_fraction=ps.retrans_fraction, streams=ps.streams,
                                streams_initial=max(1, min(256, result.streams.initial)),
                                chunk_size=result.chunk_size, settle_s=settle)  # fmt: skip
        if record is not None or ctx.anomalies:
            self._save_trace(ctx, record)
        outcome = None
        if record is not None:
            outcome = {k: getattr(record, k) for k in ("goodput", "stream_bytes_per_s", "rtt_s", "retrans_fraction",
                                                       "streams")}  # fmt: skip
        pred = fc.to_json() if fc is not None else None
        if pred is not None and outcome is not None:
            for k, v in outcome.items():  # prediction vs outcome, series by series
                pred[k]["outcome"] = v
                pred[k]["error"] = v - pred[k]["value"]
        doc = {"peer": t.peer, "nic": t.nic, "prediction": pred, "used": used, "outcome": outcome,
               "settle_s": settle, "samples": len(ctx.samples), "anomalies": list(ctx.anomalies)}  # fmt: skip
        return replace(result, path=doc)

    # -- helpers -----------------------------------------------------------

    def _can_seal(self, ctrl: FrameSocket) -> bool:
        """Offer sealed data records: a TLS stream, ``security.data_records = "sealed"``, AES-GCM loaded."""
        return ctrl.tls and self.security.data_records == "sealed" and aead.available()[0]

    def _records(self, ctrl: FrameSocket, sess: SendSession) -> tuple[str, str]:
        """How the data streams carry their frames, and why: the report's ``socket.records``."""
        if not ctrl.tls:
            return "plaintext", "security.plaintext = true: no TLS, no encryption"
        if sess.sealed:
            return "sealed", ("AES-256-GCM records of up to a chunk, keyed through each data stream's mutual-TLS "
                              "session (dwcp.security.aead)")  # fmt: skip
        if self.security.data_records != "sealed":
            return "tls", 'security.data_records = "tls" here'
        ok, why = aead.available()
        if not ok:
            return "tls", f"no AES-GCM here: {why}"
        return (
            "tls",
            'the receiver keeps TLS records (its security.data_records = "tls", or no AES-GCM there)',
        )

    def _dictionary_for(self, key: str, resource_type: str | None):
        """The zstd dictionary this send of ``key`` uses: ``resource_type``'s, else the first
        [[codec.dictionary]] rule's that matches; ConfigError if that type has none (or no store)."""
        if self.dictionaries is not None:
            return self.dictionaries.for_key(
                key, self.codec.dictionary, resource_type
            )  # None: no rule matched
        if resource_type is None and type_for(key, self.codec.dictionary) is None:
            return None
        raise ConfigError(f"key {key!r} uses a zstd dictionary, but this sender has no dictionaries "
                          "directory (run it with --config)")  # fmt: skip

    @staticmethod
    def _recv_page_hashes(fs: FrameSocket, npages: int) -> bytes:
        out = bytearray(npages * 8)
        got = 0
        while got < npages:
            r = fs.recv_control(C.FRAME_PAGE_HASHES)
            if r is None:
                raise BrokenResourceError("receiver closed the control stream during page hashes")
            h, payload = r
            if h.frame_type == C.FRAME_ERROR:
                raise TransferError.refused(payload["message"], payload["code"])
            first, n = h.offset, len(payload) // 8
            if first != got or first + n > npages:
                raise RemoteProtocolError("page hashes out of order or out of range", C.ERR_MALFORMED)
            out[first * 8 : (first + n) * 8] = payload
            got += n
        return bytes(out)

    def _nic_profile(self, host: str) -> dict | None:
        if not self.tune_dir:
            return None
        from dwcp.tune import egress_nic, load_profile

        nic = self.transport.interface or egress_nic(host)
        return load_profile(self.tune_dir, nic) if nic else None

    def _nic_plan(self, prof: dict, streams: int | None, path, fresh: bool, peer: str, loopback: bool):
        """What this send takes from its NIC's profile ``prof`` (dwcp.transport.nicplan)."""
        from .chunking import PATH_MAX_AGE_S
        from .nicplan import plan_nic

        tp = self.transport
        measured_chunk = measured_streams = None
        if tp.adaptive_chunks and path is not None and time.time() - path.at <= PATH_MAX_AGE_S:
            measured_chunk = f"the path to {peer} was measured by an earlier send (adaptive_chunks)"
        if fresh and path is not None:
            measured_streams = f"the forecast of the path to {peer}: {path.streams} streams"
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # not Linux: every CPU is taken as allowed
            allowed = None
        return plan_nic(prof, tp, fixed_streams=streams, measured_chunk=measured_chunk,
                        measured_streams=measured_streams, loopback=loopback, allowed_cpus=allowed)  # fmt: skip

    @staticmethod
    def _nic_report(plan, state: _State) -> dict | None:
        """The report's ``nic``: the plan, less an affinity no stream thread got."""
        if plan is None:
            return None
        if plan.cpus is not None and state.pinned_threads == 0 and state.pin_error is not None:
            plan = plan.without_affinity(f"sched_setaffinity failed: {state.pin_error}")
        return plan.to_json()

    @staticmethod
    def _rtt_s(fs: FrameSocket) -> float:
        try:
            info = read_tcp_info(fs.sock)
        except OSError:
            info = None
        if info is None or not info.rtt_us:
            return 0.001
        return max(info.rtt_us, 1) / 1e6

    def _caller_digest(self, base: FileSource) -> bytes:
        """The digest of the caller's previous version, cached beside the baselines (source rule 5)."""
        if self.baselines is None:
            return base.digest()
        from .source import DigestCache

        t0 = time.perf_counter()
        d, cached = DigestCache(self.baselines.data_dir).digest(base)
        log.debug("base %s: digest %s (%s)", base.name, d.hex(),
                  "cached" if cached else f"hashed in {time.perf_counter() - t0:.2f} s")  # fmt: skip
        return d

    def _remember(self, cache_key: str, src: BufferSource | FileSource, digest: bytes, spans,
                  chunk_size: int) -> str | None:  # fmt: skip
        """Keep a copy of what was sent as the baseline of the next send of this key; returns how
        (``TransferReport.baseline``), None if nothing was kept.

        The copy must be what the receiver verified: a file may have changed since its chunks were
        sent.  A file is cloned or copied in the kernel (``Partial.fill_from``: FICLONE, else
        copy_file_range), and the commit hashes the copy through a mapping of it; where neither
        works (a block device, another file system on an old kernel), and for a buffer, the source
        is read again and hashed as it is written ("write").  A copy without ``digest`` is dropped
        with a warning and the next send goes without a base.
        """
        assert self.baselines is not None
        if self.baselines.get(cache_key, digest) is not None:
            return "held"
        try:
            # a copy in the kernel allocates as it goes (and a clone needs no room): no free-space check
            p = self.baselines.begin(cache_key, digest, src.size, chunk_size,
                                     preallocate=not isinstance(src, FileSource))  # fmt: skip
        except DWCPError as exc:
            log.warning("could not keep %s as a baseline: %s (next send goes full)", cache_key, exc)
            return None
        how: str | None = None
        try:
            if isinstance(src, FileSource):
                how = p.fill_from(src.fileno())
            if how is not None:
                try:
                    p.commit()  # verifies: hashes the copy itself, through a mapping
                except IntegrityError as exc:  # the commit removed the copy
                    raise SourceChangedError(f"{src.name} changed after it was sent") from exc
            else:
                how = "write"
                for i, (off, ln) in enumerate(spans):
                    chunk = src.read(off, ln)
                    p.write(i, chunk)
                    ch, blocks = chunk_hash(chunk)  # the leaves, from the very bytes written
                    p.hashed(off, ln, blocks, chunk)
                    p.mark_done(i, ch)
                try:
                    p.commit()  # the leaf hashes above, and only the leaves a chunk boundary cut read back
                except IntegrityError as exc:  # the commit removed the copy
                    raise SourceChangedError(f"{src.name} changed after it was sent") from exc
        except DWCPError as exc:
            p.abort(keep=False)
            log.warning("could not keep %s as a baseline: %s (next send goes full)", cache_key, exc)
            return None
        except Exception as exc:  # the receiver has the object: keeping our copy must not fail the send
            p.abort(keep=False)
            log.warning("could not keep %s as a baseline: %s: %s (next send goes full)", cache_key,
                        type(exc).__name__, exc)  # fmt: skip
            return None
        except BaseException:
            p.abort(keep=False)
            raise
        log.debug("kept %s as the baseline of %s (%s)", src.name, cache_key, how)
        return how

    def _count_chain(self, cache_key: str, mode: str, record: dict | None, now: float) -> int | None:
        """Record a finished send in the key's delta chain (see rule 5); returns the chain's length after it."""
        assert self.baselines is not None
        chain = _chain(record)
        if mode == "full":
            record = {"deltas": 0, "full_at": now}
        elif chain is not None:
            record = {"deltas": chain[0] + 1, "full_at": chain[1]}
        else:  # a non-full send with no full one on record (the receiver ignored our caps): nothing to count from
            return None
        try:
            self.baselines.write_meta(cache_key, record)
        except DWCPError as exc:
            log.warning("could not record the delta chain of %s: %s", cache_key, exc)
        return record["deltas"]

    def _drop_baseline(self, info) -> None:
        """Remove a kept baseline that fails its digest (the next sends of its key go without it)."""
        log.warning("local baseline %s of %s fails its digest: dropped; this send goes without a base",
                    info.path, info.key)  # fmt: skip
        try:
            self.baselines.remove_version(info)
        except DWCPError as exc:  # it stays; every send of the key checks it and goes without it
            log.warning("could not remove it: %s", exc)

    @staticmethod
    def _heard_on_control(ctrl: FrameSocket, ctx: _StreamCtx) -> None:
        """The receiver spoke on the control stream before DONE: it ended the transfer; fail it with its words.

        A data stream's own ERROR can be lost: the receiver closes the stream after it, and our next
        chunk's write fails (EPIPE) before we read it.  The control stream hears the reason too.
        """
        try:
            got = ctrl.recv_control(C.FRAME_ERROR)
        except (OSError, DWCPError) as exc:
            ctx.fail(f"control stream: {type(exc).__name__}: {exc}")
            return
        if got is None:
            ctx.fail("receiver closed the control stream")
            return
        err = TransferError.refused(got[1]["message"], got[1]["code"])
        ctx.fail(str(err), err)

    def _run_streams(self, ctx: _StreamCtx, ctrl: FrameSocket, n0: int, controller, decisions: list,
                     t_start: float, progress=None) -> int:  # fmt: skip
        tp = self.transport
        state, sess = ctx.state, ctx.sess
        threads: dict[int, threading.Thread] = {}
        next_id = 0
        started: set[int] = set()  # stream ids that have registered as active (or exited)
        max_seen = 0
        last_t, last_acked = time.monotonic(), 0
        last_tcp: tuple[int, int, int] | None = None
        while True:
            threads = {i: th for i, th in threads.items() if th.is_alive()}
            if (
                not state.all_done.is_set() and ctrl.readable()
            ):  # before the budget: the reason beats "gave up"
                self._heard_on_control(ctrl, ctx)
            # only streams that failed count against the budget, not ones the controller retired
            if state.stream_failures > tp.max_stream_reconnects and not state.all_done.is_set():
                ctx.fail(f"gave up after {state.stream_failures} stream failures: "
                           f"{'; '.join(state.stream_errors[-3:])}")  # fmt: skip
            if state.all_done.is_set():
                break
            while True:
                # one consistent view: a stream registers (started + active_streams) under the lock, and a
                # torn read between the two counted it in neither and spawned a spare that then retired
                with state.lock:
                    if ctx.sess.failed or state.active_streams + sum(1 for i in threads if i not in started) \
                            >= state.target_streams:  # fmt: skip
                        break  # (a failed transfer: its streams leave before all_done is set; no spare)
                sid = next_id
                next_id += 1
                th = threading.Thread(
                    target=ctx.run, args=(sid, started), name=f"dwcp-stream-{sid}", daemon=True
                )
                threads[sid] = th
                th.start()
            max_seen = max(max_seen, len(threads))
            state.all_done.wait(0.25 if controller is None else SAMPLE_S)
            if progress is not None:
                progress(sess.acked_raw, sess.size)
            now = time.monotonic()
            if now - last_t >= SAMPLE_S:
                # goodput: the bytes TCP saw acknowledged, in raw bytes at the transfer's encoding ratio so
                # far (chunk ACKs as a fallback: coarse, see _State.tcp_totals); retransmitted: of TCP's sent
                tcp = state.tcp_totals()
                rr = None
                if tcp is not None and last_tcp is not None:
                    raw_per_wire = sess.raw_sent / sess.wire_bytes if sess.wire_bytes else 1.0
                    goodput = max(0, tcp[0] - last_tcp[0]) * raw_per_wire / (now - last_t)
                    if tcp[1] > last_tcp[1]:
                        rr = min(1.0, max(0.0, (tcp[2] - last_tcp[2]) / (tcp[1] - last_tcp[1])))
                else:
                    goodput = (sess.acked_raw - last_acked) / (now - last_t)
                last_t, last_acked, last_tcp = now, sess.acked_raw, tcp
                self._sample(ctx, goodput, rr)
                if controller is None:
                    continue
                d = controller.observe(now, goodput, rr)
                if d.target_streams != state.target_streams:
                    state.target_streams = d.target_streams
                    if ctx.watch is not None:
                        ctx.watch.note_streams(time.time(), d.target_streams)
                    decisions.append(
                        {"t": round(now - t_start, 3), "streams": d.target_streams, "reason": d.reason}
                    )
        for th in threads.values():
            th.join(tp.stall_timeout_s + 1)
        return max_seen


class _StreamCtx:
    """What every stream thread of one transfer shares."""

    def __init__(self, sender: Sender, host, port, sess: SendSession, state: _State, q, data, base,
                 base_digest, peer_hashes, encoder: ChunkEncoder, limiter, bdp, dictionary) -> None:  # fmt: skip
        self.sender = sender
        self.host, self.port = host, port
        self.sess = sess
        self.transfer_id = sess.transfer_id
        self.state = state
        self.q = q
        self.data = data
        self.base = base
        self.base_digest = base_digest
        self.peer_hashes = peer_hashes
        self.encoder = encoder
        self.limiter = limiter
        self.bdp = bdp
        self.dictionary = dictionary  # announced in HELLO; the receiver holds it (or gets it first)
        self.window_floor = sender.transport.window_chunks
        self.chunk_bytes = sender.transport.chunk_size_bytes
        self.events = sender.events
        self.peer = f"{host}:{port}"
        self.ready: Callable[[int, float], bool] | None = None  # a relay: wait for chunk i to land
        self.buffer_bytes: int | None = None  # SO_SNDBUF/SO_RCVBUF from the NIC profile (rule 8)
        self.cpus: tuple[int, ...] | None = None  # pin each stream thread here (rule 8)
        self.zerocopy = False  # raw payloads go MSG_ZEROCOPY (rule 9)
        self.engine: Engine | None = None  # the send's engine (rule 10); threads: each stream sends its own
        self.trace: PathTrace | None = None  # the path's trace (dwcp.transport.trace), None: none kept
        self.watch: PathWatch | None = None  # the path's anomaly detectors (bulk sends with a trace)
        self.samples: list[list] = []  # [t, goodput, rtt_s, retrans, streams, chunk_size] every SAMPLE_S
        self.anomalies: list[dict] = []  # what the watch raised (Anomaly.to_json())

    def _pin(self) -> None:
        """Pin the calling stream thread to the NIC's tx IRQ CPUs; a refusal costs the affinity only."""
        if not self.cpus:
            return
        state = self.state
        try:
            os.sched_setaffinity(threading.get_native_id(), self.cpus)
        except (AttributeError, OSError, ValueError) as exc:
            log.debug("could not pin a stream thread to CPUs %s: %s", self.cpus, exc)
            with state.lock:
                if state.pin_error is None:
                    state.pin_error = str(exc)
            return
        with state.lock:
            state.pinned_threads += 1

    def fail(self, why: str, error: SourceError | TransferError | None = None) -> None:
        """End the transfer (the first reason wins) and wake the monitor."""
        self.sess.fail(why, error)
        self.state.all_done.set()

    def run(self, sid: int, started: set[int]) -> None:
        state, sess = self.state, self.sess
        inflight: dict[int, tuple[int, float]] = {}  # chunk -> (wire bytes, when sent)
        fs: FrameSocket | None = None
        with state.lock:
            state.active_streams += 1
            started.add(sid)
        active = True
        ev, peer = self.events, self.peer
        failed = False
        win = StreamWindow(self.window_floor, self.chunk_bytes)
        zc = None
        pool = None  # a file's chunks are read into it when they may go MSG_ZEROCOPY (source rule 3)
        try:
            self._pin()
            fs, _ = self.sender.dialer.dial(
                self.host, self.port, bdp_bytes=self.bdp, buffer_bytes=self.buffer_bytes
            )
            if self.zerocopy:
                zc = fs.enable_zerocopy()
                if zc.enabled and isinstance(self.data, FileSource):
                    pool = PayloadBuffers(zc)
            if (zc is None or not zc.enabled) and self.engine is not None:
                fs.pump = self.engine.pick()  # a zero-copy socket's completions are its own thread's to read
            secret = aead.new_secret() if sess.sealed else None
            fs.send(encode_control(C.FRAME_HELLO, self.transfer_id, sess.data_hello(sid, secret)))
            if (
                secret is not None
            ):  # the secret went inside TLS: from here on, sealed records (dwcp.security.aead)
                fs.seal(secret, self.transfer_id, sender=True)
            ev.stream_opened(peer)
            state.tcp_register(sid, fs.sock)
            while not sess.failed:
                while inflight and (len(inflight) >= win.window or fs.readable()):
                    full = len(inflight) >= win.window
                    t_wait = time.monotonic()
                    acked = self._read_ack(fs, inflight)
                    now = time.monotonic()
                    if full:  # the window, not the link, held the stream up meanwhile
                        win.on_stalled(now - t_wait)
                    win.on_acked(acked, now)
                now = time.monotonic()
                if win.due(now):
                    try:
                        info = read_tcp_info(fs.sock)
                    except OSError:
                        info = None
                    win.update(now, (info.min_rtt_us or info.rtt_us) / 1e6 if info is not None else None)
                if state.all_done.is_set() or sess.failed:
                    break
                if active:
                    with state.lock:
                        if state.active_streams > state.target_streams:  # the controller wants fewer
                            state.active_streams -= 1
                            active = False
                if not active:  # retired: drain what is in flight, then leave
                    if not inflight:
                        break
                    win.on_acked(self._read_ack(fs, inflight), time.monotonic())
                    continue
                i = self.q.try_get()
                if i is None:
                    if inflight:
                        win.on_acked(self._read_ack(fs, inflight), time.monotonic())
                    else:
                        state.all_done.wait(0.01)  # others may still requeue work
                    continue
                if not sess.take(i):
                    continue
                # a buffer the kernel let go of; at most one per chunk in the window, plus the one being read
                buf = None if pool is None else pool.take(sess.spans[i][1], win.window + 1)
                f = self._encode(i, buf)
                if self.limiter is not None:
                    self.limiter.acquire(f.wire_len)
                inflight[i] = (f.wire_len, time.monotonic())
                token = fs.send(f.header, f.payload, zerocopy=zc is not None and f.codec == C.CODEC_RAW)
                if pool is not None:
                    assert buf is not None
                    pool.give_back(buf, token)
                ev.chunk("tx", peer, f.codec, f.raw_len, f.wire_len)
                sess.sent(i, f.raw_len, f.wire_len)
            if zc is not None and not sess.failed:
                try:  # every chunk acknowledged: the kernel is about to let go of the last pages, if not yet
                    zc.wait_completions()
                except (OSError, DWCPError) as exc:
                    log.info("stream %d: MSG_ZEROCOPY completions: %s: %s", sid, type(exc).__name__, exc)
            if fs is not None and not sess.failed:
                try:
                    fs.send(encode_control(C.FRAME_CLOSE, self.transfer_id, {"reason": "done"}))
                except OSError:
                    pass
            if fs is not None:
                info = read_tcp_info(fs.sock)
                if info is not None:
                    ev.tcp_info(peer, info.rtt_us / 1e6, info.total_retrans)
                    with state.lock:
                        state.stream_info.append({"stream": sid, "bytes_sent": fs.bytes_sent, "rtt_us": info.rtt_us,
                                                  "window_chunks": win.window,
                                                  "total_retrans": info.total_retrans,
                                                  "bytes_retrans": info.bytes_retrans,
                                                  "delivery_rate_bytes_per_s": info.delivery_rate_bytes_per_s})  # fmt: skip
        except (OSError, DWCPError) as exc:
            failed = True
            if _ends_transfer(exc):
                self.fail(str(exc), exc)
            else:
                # A stream-level failure (including the receiver closing this stream
                # over a protocol error, e.g. a header corrupted in flight) costs
                # this stream only: its chunks are requeued and the monitor opens a
                # replacement, within the reconnect budget.
                why = f"stream {sid}: {type(exc).__name__}: {exc}"
                log.info("%s; requeueing %d chunks", why, len(inflight))
                with state.lock:
                    state.stream_errors.append(why)
                    state.stream_failures += 1
        finally:
            if active:
                with state.lock:
                    state.active_streams -= 1
            requeued = sess.requeued(list(inflight))
            for i in requeued:
                self.q.try_put(i)
            if requeued:
                ev.chunk_retransmit("tx", peer, len(requeued))
            if zc is not None:
                with state.lock:
                    st, tot = zc.stats(), state.zerocopy
                    for k in ("sends", "calls", "copied", "fallbacks", "enobufs"):
                        tot[k] += st[k]
                    tot["completions"] += st["completed"]
                    tot["buffer_waits"] += 0 if pool is None else pool.waits
            if fs is not None:
                state.tcp_unregister(sid)
                ev.stream_closed(peer, failed)
                fs.close()

    def _encode(self, i: int, out=None):
        """Chunk ``i``'s frame; a file's chunk is read into ``out`` when given (a zero-copy stream's buffer)."""
        if self.ready is not None:
            waited = 0.0
            while not self.ready(i, 0.5):  # the upstream sender has not delivered it yet
                waited += 0.5
                if self.sess.failed or waited > self.sender.transport.stall_timeout_s * 4:
                    raise TransferError(f"chunk {i} never arrived from upstream")
        off, ln = self.sess.spans[i]
        chunk = self.data.read(
            off, ln, out
        )  # a FileSource's buffer of this thread: sent before the next read
        last = i == self.sess.nchunks - 1
        enc = self.encoder
        tid = self.transfer_id
        # the chunk's hash from the leaves the digest pass kept (digest rule 4): not hashed again
        tree = self.data.tree
        blocks = tree.leaves_of(off, ln) if tree is not None else None
        if self.peer_hashes is not None:
            p0, p1 = off // C.PAGE_SIZE, (off + ln + C.PAGE_SIZE - 1) // C.PAGE_SIZE
            return enc.encode_pages(chunk, self.peer_hashes[p0 * 8 : p1 * 8], self.base_digest, offset=off,
                                    transfer_id=tid, last=last, block_hashes=blocks)  # fmt: skip
        if self.base is not None and not self.sess.goes_full(i):
            return enc.encode(chunk, offset=off, transfer_id=tid, base=self.base.read(off, ln),
                              base_digest=self.base_digest, last=last, dictionary=self.dictionary,
                              block_hashes=blocks)  # fmt: skip
        return enc.encode(chunk, offset=off, transfer_id=tid, last=last, dictionary=self.dictionary,
                          block_hashes=blocks)  # fmt: skip

    def _read_ack(self, fs: FrameSocket, inflight: dict[int, tuple[int, float]]) -> int:
        """Read one ACK/NACK; returns the wire bytes it acknowledged.  What they mean is the session's."""
        state, sess = self.state, self.sess
        got = fs.recv_control(C.FRAME_ACK, C.FRAME_NACK)
        if got is None:
            raise BrokenResourceError("receiver closed a data stream")
        h, msg = got
        if h.frame_type == C.FRAME_ERROR:
            if msg["code"] in REFUSALS:
                raise TransferError.refused(msg["message"], msg["code"])
            raise BrokenResourceError(f"receiver closed the stream: {msg['message']} (code {msg['code']})")
        if h.frame_type == C.FRAME_ACK:
            sess.acked(msg["chunks"])  # first: an ACK of a chunk the object lacks breaks the stream
            if sess.finished:
                state.all_done.set()
            acked = 0
            now = time.monotonic()
            for c in msg["chunks"]:
                sent = inflight.pop(c, None)
                if sent is not None:
                    acked += sent[0]
                    state.chunk_latency_s.append(now - sent[1])  # list.append is atomic
            return acked
        c, reason = msg["chunk"], msg["reason"]
        what = sess.nacked(c, reason)
        inflight.pop(c, None)
        if reason != "busy" and what != NACK_IGNORE:
            self.events.chunk_retransmit("tx", self.peer)
        if what == NACK_RESEND:
            if reason != "busy":
                log.warning("chunk %d NACKed (%s); resending", c, reason)
            self.q.try_put(c)
        elif sess.failed:
            state.all_done.set()
        return 0
