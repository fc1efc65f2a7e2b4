"""Trained zstd dictionaries: training, the directory they live in, and which key uses which.

Theory of operation
-------------------
Many small objects of one kind (configs, manifests, small checkpoints) share
most of their structure but each is too small for zstd to learn it.  A
dictionary trained on samples of that kind gives zstd that knowledge up front.

A node's dictionaries live in one directory (``[codec] dictionaries_dir``,
default ``<data_dir>/dictionaries``)::

    TYPE.zdict                   trained here (`dwcp dict train --type TYPE`): what this
                                 node's sends of keys mapped to TYPE compress with
    received/ID-DIGEST.zdict     received from a peer that sent with it, kept so that it
                                 travels once

``[[codec.dictionary]]`` rules (``pattern`` = a glob over the key, ``type``)
map a key to a type; the first rule that matches wins.  A send announces the
dictionary in HELLO (zstd id, xxh3-128 digest, size); a receiver that lacks it
says so in WELCOME, and the sender sends it once on the control stream
(FRAME_DICT) before the data streams start.

Rules
-----
1. A dictionary is named on the wire by (zstd id, xxh3-128 of its bytes,
   size): two dictionaries with one id (zstd ids are random 32-bit numbers)
   are never confused, and a received one is kept only if its bytes hash to
   what HELLO announced and its zstd id is the announced id.
2. A dictionary is loaded whole or not at all.  A trained one that is not a
   zstd dictionary is a ``DictionaryError`` naming the file for the sends
   that would use it (and a warning); a received one whose bytes no longer
   hash to its name is dropped with a warning and asked for again.
3. A key mapped to a type with no trained dictionary is a ``ConfigError`` at
   the start of the send (with the command that trains one), never a silent
   send without it.
4. Files are written through dwcp.durable (atomic replace, fsync), mode 0644
   in a 0755 directory: a dictionary holds samples' structure, not secrets, but
   it is the operator's to publish, so nothing but dwcp writes there.
5. The directory is read again when its modification time changes: a
   dictionary trained while the daemon runs is used from the next send on.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import xxhash
import zstandard

from dwcp import durable
from dwcp.config import DICT_TYPE_RE as TYPE_RE
from dwcp.config import DictRule
from dwcp.errors import ConfigError, DictionaryError, RemoteProtocolError
from dwcp.wire import consts as C
from dwcp.wire.messages import MAX_DICT_BYTES  # the largest dictionary trained, sent or accepted

__all__ = [
    "Dictionary", "DictionaryStore", "DictRule", "MAX_DICT_BYTES", "MIN_SAMPLES", "TYPE_RE",
    "samples_of", "train", "type_for",
]  # fmt: skip

log = logging.getLogger("dwcp.codec.dictionaries")

MIN_SAMPLES = 8
SAMPLE_BYTES = 64 * 1024  # a file longer than this is cut into samples of this size for training
_RECEIVED_RE = re.compile(r"([0-9]{1,10})-([0-9a-f]{32})\.zdict")


@dataclass(frozen=True, eq=False)
class Dictionary:
    """One zstd dictionary: its type (``""`` for a received one), zstd id, xxh3-128 digest and bytes."""

    type: str
    id: int
    digest: bytes
    data: bytes
    zdict: zstandard.ZstdCompressionDict

    @classmethod
    def of(cls, data: bytes, type: str = "") -> Dictionary:
        """Parse ``data`` as a zstd dictionary; DictionaryError if it is not one."""
        if not 0 < len(data) <= MAX_DICT_BYTES:
            raise DictionaryError(f"a dictionary is 1 to {MAX_DICT_BYTES} bytes, this one {len(data)}")
        if data[:4] != b"\x37\xa4\x30\xec":  # ZSTD_MAGIC_DICTIONARY: a raw-content "dictionary" has id 0
            raise DictionaryError("not a zstd dictionary (no dictionary magic)")
        try:
            zd = zstandard.ZstdCompressionDict(data, dict_type=zstandard.DICT_TYPE_FULLDICT)
            did = zd.dict_id()
            zd.precompute_compress(level=3)  # loads the tables: a malformed dictionary fails here
        except zstandard.ZstdError as exc:
            raise DictionaryError(f"not a zstd dictionary: {exc}") from None
        if did == 0:
            raise DictionaryError("a zstd dictionary with id 0 (not a trained dictionary)")
        return cls(type, did, xxhash.xxh3_128_digest(data), bytes(data), zd)

    @property
    def ref(self) -> dict:
        """How HELLO names it."""
        return {"id": self.id, "digest": self.digest.hex(), "size": len(self.data)}


def type_for(key: str, rules: Sequence[DictRule]) -> tuple[str, int] | None:
    """(type, rule index) of the first rule matching ``key``, or None."""
    for i, r in enumerate(rules):
        if r.matches(key):
            return r.type, i
    return None


def samples_of(blobs: Iterable[bytes], sample_bytes: int = SAMPLE_BYTES) -> list[bytes]:
    """Training samples: each non-empty blob, cut into ``sample_bytes`` pieces where longer."""
    out = []
    for b in blobs:
        for i in range(0, len(b), sample_bytes):
            out.append(bytes(b[i : i + sample_bytes]))
    return out


def train(type: str, samples: list[bytes], size_bytes: int = 112640) -> Dictionary:
    """Train a dictionary of at most ``size_bytes`` from ``samples``; ConfigError says what is missing."""
    if not TYPE_RE.fullmatch(type):
        raise ConfigError(f"dictionary type {type!r}: 1-64 letters, digits, '.', '_' or '-'")
    if not 256 <= size_bytes <= MAX_DICT_BYTES:
        raise ConfigError(f"dictionary size {size_bytes}: between 256 and {MAX_DICT_BYTES} bytes")
    samples = [bytes(s) for s in samples if len(s)]
    total = sum(map(len, samples))
    if len(samples) < MIN_SAMPLES:
        raise ConfigError(
            f"cannot train a zstd dictionary for {type!r}: got {len(samples)} non-empty samples, "
            f"need at least {MIN_SAMPLES}"
        )
    if total < 4 * size_bytes:
        raise ConfigError(
            f"cannot train a {size_bytes}-byte zstd dictionary for {type!r} from {total} bytes of "
            f"samples: give at least {4 * size_bytes} bytes (4x the size) or ask for a smaller one (--size)"
        )
    buffers: list[bytes | bytearray | memoryview] = list(samples)
    try:
        zd = zstandard.train_dictionary(size_bytes, buffers)
    except zstandard.ZstdError as exc:
        raise ConfigError(
            f"zstd could not train a dictionary for {type!r} from {len(samples)} samples ({total} bytes): "
            f"{exc}; the samples may be too few or too alike"
        ) from None
    return Dictionary.of(zd.as_bytes(), type)


class DictionaryStore:
    """The dictionaries of one node: trained ones by type, all of them by (id, digest).

    ``path`` None: in memory only (tests, a sender without a data directory).
    Thread-safe: the stream threads of every transfer share one.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._by_type: dict[str, Dictionary] = {}
        self._by_ref: dict[tuple[int, bytes], Dictionary] = {}
        self._broken: dict[str, str] = {}  # type -> why its TYPE.zdict cannot be used
        self._mtime: tuple[int, int] | None = None  # (dir, received/) st_mtime_ns when last read
        self.received = 0  # dictionaries received from peers and kept (since start)

    # -- lookups -------------------------------------------------------------------------------
    def for_type(self, type: str) -> Dictionary | None:
        """The trained dictionary of ``type``; None if there is none; DictionaryError if its file is bad."""
        self.refresh()
        with self._lock:
            broken = self._broken.get(type)
            d = self._by_type.get(type)
        if broken is not None:
            raise DictionaryError(broken)
        return d

    def get(self, dict_id: int, digest: bytes) -> Dictionary | None:
        self.refresh()
        with self._lock:
            return self._by_ref.get((dict_id, bytes(digest)))

    def types(self) -> list[Dictionary]:
        self.refresh()
        with self._lock:
            return sorted(self._by_type.values(), key=lambda d: d.type)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_ref)

    def for_key(self, key: str, rules: Sequence[DictRule], explicit: str | None = None) -> Dictionary | None:
        """The dictionary a send of ``key`` compresses with (rule 3): ``explicit`` type, else the rules'."""
        if explicit is not None:
            t, why = explicit, f"the send asked for type {explicit!r}"
        else:
            hit = type_for(key, rules)
            if hit is None:
                return None
            t, i = hit
            why = f"codec.dictionary rule {i + 1} ({rules[i].pattern!r} -> {t!r})"
        d = self.for_type(t)
        if d is None:
            where = self.path if self.path is not None else "memory"
            raise ConfigError(
                f"key {key!r} uses dictionary type {t!r} ({why}), but {where} holds no {t}.zdict: train one "
                f"with `dwcp dict train --type {t}{'' if self.path is None else ' --dir ' + self.path} FILES...` "
                "or change the rule"
            )
        return d

    # -- changes -------------------------------------------------------------------------------
    def add(self, d: Dictionary) -> Dictionary:
        """Hold ``d`` (a trained one, in memory); write it as TYPE.zdict if the store has a path."""
        if not TYPE_RE.fullmatch(d.type):
            raise ConfigError(f"dictionary type {d.type!r}: 1-64 letters, digits, '.', '_' or '-'")
        if self.path is not None:
            os.makedirs(self.path, mode=0o755, exist_ok=True)
            target = os.path.join(self.path, f"{d.type}.zdict")
            try:
                durable.write_atomic(target, d.data, mode=0o644)
            except OSError as exc:
                raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
        with self._lock:
            self._by_type[d.type] = d
            self._by_ref[(d.id, d.digest)] = d
        return d

    def receive(self, dict_id: int, digest: bytes, size: int, data: bytes | memoryview) -> Dictionary:
        """A dictionary a peer sent as announced (rule 1); kept (and written) once verified.

        RemoteProtocolError(ERR_UNKNOWN_DICT) if the bytes are not what was announced.
        """
        data = bytes(data)
        if len(data) != size:
            raise RemoteProtocolError(f"dictionary {dict_id}: {len(data)} bytes, HELLO announced {size}",
                                      C.ERR_UNKNOWN_DICT)  # fmt: skip
        got = xxhash.xxh3_128_digest(data)
        if got != digest:
            raise RemoteProtocolError(f"dictionary {dict_id}: its bytes hash to {got.hex()}, HELLO announced "
                                      f"{bytes(digest).hex()}", C.ERR_UNKNOWN_DICT)  # fmt: skip
        try:
            d = Dictionary.of(data)
        except DictionaryError as exc:
            raise RemoteProtocolError(f"dictionary {dict_id}: {exc}", C.ERR_UNKNOWN_DICT) from None
        if d.id != dict_id:
            raise RemoteProtocolError(f"dictionary announced as {dict_id} has zstd id {d.id}",
                                      C.ERR_UNKNOWN_DICT)  # fmt: skip
        if self.path is not None:
            rdir = os.path.join(self.path, "received")
            os.makedirs(rdir, mode=0o755, exist_ok=True)
            durable.write_atomic(os.path.join(rdir, f"{d.id}-{d.digest.hex()}.zdict"), data, mode=0o644)
        with self._lock:
            self._by_ref.setdefault((d.id, d.digest), d)
            self.received += 1
        return d

    # -- the directory (rules 2, 5) -------------------------------------------------------------
    def _stamp(self) -> tuple[int, int] | None:
        assert self.path is not None
        try:
            a = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return None
        try:
            b = os.stat(os.path.join(self.path, "received")).st_mtime_ns
        except FileNotFoundError:
            b = 0
        return a, b

    def _same(self, d: Dictionary) -> Dictionary:
        """The object held already for ``d``'s bytes, if any (zstd contexts are cached per object)."""
        with self._lock:
            old = self._by_ref.get((d.id, d.digest))
        return old if old is not None and old.type == d.type else d

    def refresh(self) -> None:
        """Read the directory again if it changed since it was last read."""
        if self.path is None:
            return
        stamp = self._stamp()
        with self._lock:
            if stamp == self._mtime:
                return
        by_type: dict[str, Dictionary] = {}
        by_ref: dict[tuple[int, bytes], Dictionary] = {}
        broken: dict[str, str] = {}
        if stamp is not None:
            for name in sorted(os.listdir(self.path)):
                if not name.endswith(".zdict") or name.startswith("."):
                    continue
                t = name[: -len(".zdict")]
                if not TYPE_RE.fullmatch(t):
                    continue
                try:
                    d = self._same(_load(os.path.join(self.path, name), t))
                except DictionaryError as exc:
                    if self._broken.get(t) != str(exc):
                        log.warning("%s", exc)
                    broken[t] = str(exc)
                    continue
                by_type[t] = d
                by_ref[(d.id, d.digest)] = d
            rdir = os.path.join(self.path, "received")
            for name in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else ():
                m = _RECEIVED_RE.fullmatch(name)
                if m is None:
                    continue
                f = os.path.join(rdir, name)
                try:
                    d = _load(f, "")
                    if (d.id, d.digest.hex()) != (int(m[1]), m[2]):
                        raise DictionaryError(f"{f}: its bytes are no longer the dictionary its name says")
                except DictionaryError as exc:
                    log.warning("%s; dropped (a peer sends it again when it needs it)", exc)
                    durable.discard(f)
                    continue
                by_ref.setdefault((d.id, d.digest), self._same(d))
        with self._lock:
            self._by_type, self._broken, self._mtime = by_type, broken, stamp
            self._by_ref = by_ref


def _load(path: str, type: str) -> Dictionary:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DICT_BYTES + 1)
    except OSError as exc:
        raise DictionaryError(f"cannot read dictionary {path}: {exc.strerror or exc}") from None
    try:
        return Dictionary.of(data, type)
    except DictionaryError as exc:
        raise DictionaryError(f"{path}: {exc}; train it again with `dwcp dict train`") from None
