"""The whole dwcp exception hierarchy.

Pure Python on purpose: both the Cython kernels (``dwcp._fast``) and their
reference twins (``dwcp._ref``) import these classes, so a parity test can
assert that both raise *the same* exception type for the same bad input.

The hierarchy says who is at fault:

* ``ConfigError``         -- the operator (bad config file or flag).
* ``LocalProtocolError``  -- our own code tried to send something invalid.
* ``RemoteProtocolError`` -- the peer (or the wire) sent something invalid;
  carries a wire ``code`` from ``dwcp.wire.consts`` (``ERR_*``).
* ``IntegrityError``      -- a remote protocol error where the bytes parsed
  but the checksum did not match (corruption in flight or on disk).
* ``HeaderTimeoutError``  -- a remote protocol error where a frame header
  began but did not end within its deadline.
* ``ClosedResourceError`` -- we closed the resource and then used it.
* ``BrokenResourceError`` -- the peer or network broke it; raised ``from``
  the underlying cause.
* ``InternalError``       -- a bug in dwcp.
* ``StorageError``        -- the receiver's disk (full, I/O error).
* ``SourceError``         -- the sender's own file (a FIFO, unreadable, or
  ``SourceChangedError``: it shrank or grew while being sent).
* ``InvalidKeyError``     -- the caller's object key (also a ``ValueError``).
* ``KeyBusyError``        -- another transfer holds the key's write lease; retry later.
* ``NotLeaderError``      -- a Raft proposal or read went to a node that is not
  the leader; ``leader`` names the one it knows, to retry there.
* ``NoHealthyPeerError``  -- the balancer found no candidate that is healthy
  and behind a closed breaker.
* ``PeerUnreachableError`` -- a connection to a peer's data port failed
  (refused, timed out, no route); names the target and a hint.  Also a
  ``ConnectionError``, so code that handles socket errors handles it.
* ``AuthenticationError`` -- the TLS handshake with a peer failed: which
  side's certificate or CA did not verify, and what to check.
* ``ReplicationError``    -- a replicated send verified fewer copies than
  ``cluster.ack`` asks for; ``replicas`` lists each home's outcome (the
  copies that were made stay, and are listed in the catalog).
* ``SubmissionQueueFullError`` -- the caller queued more io_uring operations
  than the submission queue holds without submitting (``dwcp._fast.uring``).

As a tree::

    DWCPError
    +-- ConfigError (also ValueError)
    |   +-- DictionaryError
    +-- ProtocolError (abstract)
    |   +-- LocalProtocolError
    |   +-- RemoteProtocolError
    |       +-- IntegrityError
    |       +-- HeaderTimeoutError
    +-- ClosedResourceError
    +-- BrokenResourceError
    |   +-- EtcdError
    +-- InternalError
    +-- InvalidKeyError (also ValueError)
    +-- KeyBusyError
    +-- StorageError
    +-- SourceError
    |   +-- SourceChangedError
    +-- NotLeaderError
    +-- NoHealthyPeerError
    +-- PeerUnreachableError (also ConnectionError)
    +-- AuthenticationError
    +-- ReplicationError
    +-- TransferError
    +-- SubmissionQueueFullError

Socket errors stay built-in ``OSError`` subclasses.
"""

from __future__ import annotations

__all__ = [
    "exit_code",
    "bind_error",
    "DWCPError",
    "ConfigError",
    "DictionaryError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "IntegrityError",
    "ForgedRecordError",
    "HeaderTimeoutError",
    "ClosedResourceError",
    "BrokenResourceError",
    "EtcdError",
    "InternalError",
    "InvalidKeyError",
    "KeyBusyError",
    "StorageError",
    "SourceError",
    "SourceChangedError",
    "NotLeaderError",
    "NoHealthyPeerError",
    "ReplicationError",
    "PeerUnreachableError",
    "AuthenticationError",
    "TransferError",
    "SubmissionQueueFullError",
]


class DWCPError(Exception):
    """Root of every exception dwcp raises on purpose."""


class ConfigError(DWCPError, ValueError):
    """The operator's configuration or arguments are invalid.

    ``problems`` lists every problem found (one line each), so that
    ``dwcp check-config`` can report them all at once; ``str()`` joins them.
    """

    def __init__(self, message: str = "", problems: list[str] | None = None) -> None:
        self.problems = list(problems) if problems else ([message] if message else [])
        super().__init__(message or "\n".join(self.problems))


class DictionaryError(ConfigError):
    """A zstd dictionary file that cannot be used (not a dictionary, rotted); the message names it."""


class ProtocolError(DWCPError):
    """Abstract: a violation of the dwcp wire protocol.

    ``code`` is the wire error code (``dwcp.wire.consts.ERR_*``) that a
    session sends to the peer before closing.
    """

    code: int

    def __init__(self, msg: str, code: int = 0) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a subclass")
        super().__init__(msg)
        self.code = code

    def __reduce__(self):  # keep ``code`` across pickling (multiprocessing)
        return (type(self), (str(self), self.code))


class LocalProtocolError(ProtocolError):
    """We were about to violate the protocol (a dwcp caller's mistake)."""


class RemoteProtocolError(ProtocolError):
    """The peer violated the protocol: malformed, truncated or absurd input."""


class IntegrityError(RemoteProtocolError):
    """Well-formed input whose checksum does not match its content."""


class ForgedRecordError(RemoteProtocolError):
    """A sealed record (dwcp.security.aead) failed authentication: forged, altered, replayed or out of
    order.  Nothing of the stream can be trusted any more: it is dropped, never NACKed and read on."""


class HeaderTimeoutError(RemoteProtocolError):
    """A frame header began but did not end within its deadline (a drip, or a peer stalled mid-header).

    Not a ``TimeoutError``: the stream is out of step mid-header, so no caller may retry the read.
    """


class ClosedResourceError(DWCPError):
    """The resource was closed by us and then used."""


class BrokenResourceError(DWCPError):
    """The peer or the network broke the resource; see ``__cause__``."""


class EtcdError(BrokenResourceError):
    """etcd could not be reached, refused a request, or answered something we cannot use.

    ``endpoint`` is the endpoint that failed last (None when none was tried);
    ``code`` the gRPC status code etcd gave, if any.
    """

    def __init__(self, msg: str, endpoint: str | None = None, code: int | None = None) -> None:
        super().__init__(f"{msg} (etcd {endpoint})" if endpoint else msg)
        self.msg, self.endpoint, self.code = msg, endpoint, code

    def __reduce__(self):
        return (type(self), (self.msg, self.endpoint, self.code))


class InternalError(DWCPError):
    """A dwcp bug: an invariant that should hold did not."""


class InvalidKeyError(DWCPError, ValueError):
    """An object key that is empty, too long, or could escape the data directory."""


class KeyBusyError(DWCPError):
    """Another transfer holds the write lease on this key; retry later."""


class StorageError(DWCPError):
    """The receiver could not store an object (disk full, I/O error); see ``__cause__``."""


class SourceError(DWCPError):
    """The local source of a send cannot be used or read; the message names it.

    ``stats``: what the sender had sent when it failed, when it was sending (as TransferError's).
    """

    stats: dict = {}


class SourceChangedError(SourceError):
    """The source file changed size (or ended early) while it was being sent."""


class NotLeaderError(DWCPError):
    """A proposal went to a node that is not the leader; ``leader`` is the leader it knows, if any."""

    def __init__(self, message: str, leader: str | None) -> None:
        super().__init__(message)
        self.leader = leader


class NoHealthyPeerError(DWCPError):
    """Every candidate is unhealthy, ejected, or behind an open breaker."""


class PeerUnreachableError(DWCPError, ConnectionError):
    """A connection to a peer failed; the message names the target and a hint."""


class AuthenticationError(DWCPError):
    """The mutual-TLS handshake with a peer failed; the message says whose certificate or CA."""


class ReplicationError(DWCPError):
    """Fewer verified copies than ``cluster.ack`` asks for; ``replicas``: [{"peer", "state", "error"}]."""

    def __init__(self, message: str, replicas: tuple[dict[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.replicas = replicas


class TransferError(DWCPError):
    """A send failed; the message says why (the receiver's words when it said so).

    ``stats`` holds what was sent before the failure, when known; ``code``
    the receiver's wire error code when it refused (``ERR_*``; 0 = unspecified),
    None when it did not answer with an error.  (Also importable from
    ``dwcp.transport.sender``.)
    """

    stats: dict = {}
    code: int | None = None

    @classmethod
    def refused(cls, message: str, code: int) -> TransferError:
        err = cls(f"receiver refused: {message} (code {code})")
        err.code = code
        return err


class SubmissionQueueFullError(DWCPError):
    """Every submission-queue entry of an io_uring ``Ring`` is queued and not yet submitted: call
    ``submit_and_wait`` (or ``submit``) before queueing more (a caller's mistake, never the kernel's)."""


# Exit codes of `dwcp` (as rsync and restic have theirs): a script can tell what to do about a failure.
# The daemon's control API answers a failed request with the same code ("exit"), so the CLI exits
# with it whether it did the work or the daemon did.
EXIT_ERROR = 1  # anything not below
EXIT_USAGE = 2  # the command line (argparse), an invalid key
EXIT_CONFIG = 3  # the config file, a setting, or a file it names
EXIT_NETWORK = 4  # a peer unreachable, a connection lost mid-way, no healthy peer, a peer busy or draining
EXIT_AUTH = 5  # mutual TLS: a certificate or CA that did not verify; an ACL that refused
EXIT_INTEGRITY = 6  # a chunk, a record or an object that failed its checksum
EXIT_STORAGE = 7  # a disk: the receiver's store full or failing, a local file missing or unreadable
EXIT_CONFLICT = 8  # fewer verified replicas than cluster.ack asks for; a concurrent write committed first


def exit_code(exc: BaseException) -> int:
    """The exit code a failure maps to (EXIT_*)."""
    import argparse

    from dwcp.wire import consts as C

    code = getattr(exc, "code", None) if isinstance(exc, TransferError) else None
    if isinstance(exc, ReplicationError) or code == C.ERR_CONFLICT:
        return EXIT_CONFLICT
    if isinstance(exc, AuthenticationError) or code == C.ERR_FORBIDDEN:
        return EXIT_AUTH
    if isinstance(exc, IntegrityError) or code in (C.ERR_CHECKSUM, C.ERR_FORGED):
        return EXIT_INTEGRITY
    if isinstance(exc, StorageError | SourceError | FileNotFoundError | PermissionError | IsADirectoryError) \
            or code in (C.ERR_STORAGE, C.ERR_TOO_LARGE):  # fmt: skip
        return EXIT_STORAGE
    if isinstance(exc, InvalidKeyError | argparse.ArgumentTypeError):
        return EXIT_USAGE
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, PeerUnreachableError | NoHealthyPeerError | BrokenResourceError | OSError) \
            or code in (C.ERR_BUSY, C.ERR_UNAVAILABLE):  # fmt: skip
        return EXIT_NETWORK
    return EXIT_ERROR


def bind_error(what: str, host: str, port: int, exc: OSError) -> ConfigError:
    """A failed bind of ``what`` (``listen.data_port``...) as one line naming the address and a hint."""
    import errno as _errno

    hints = {
        _errno.EADDRINUSE: f"in use by another process (ss -ltnp 'sport = :{port}'): another dwcpd?",
        _errno.EACCES: "a port below 1024 needs CAP_NET_BIND_SERVICE; use a port >= 1024",
        _errno.EADDRNOTAVAIL: f"{host} is not an address of this host (ip -br addr)",
    }
    why = hints.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
    err = ConfigError(f"{what}: cannot bind {host}:{port}: {why}")
    err.errno = exc.errno  # type: ignore[attr-defined]
    return err
