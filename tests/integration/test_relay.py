"""Store-and-forward relaying: chunks go on to the next hop as they land, end to end verified."""

from __future__ import annotations

import numpy as np
import pytest

from dwcp._testbase.transfer import server_config
from dwcp.config import SecurityConfig, TransportConfig
from dwcp.digest import object_digest
from dwcp.transport.sender import Sender, TransferError
from dwcp.transport.server import DataServer
from dwcp.wire import consts as C

TP = TransportConfig(chunk_size_bytes=1 << 20, stall_timeout_s=5.0)


def test_relay_forwards_pipelined_and_both_hold_the_object(tmp_path):
    data = np.random.default_rng(8).integers(0, 256, 12 << 20, dtype=np.uint8)
    with DataServer(server_config(tmp_path / "dest", node="dest")) as dest:
        to = "{}:{}".format(*dest.address)
        with DataServer(server_config(tmp_path / "relay", node="relay", sections=_allow(to))) as relay:
            # a slow first hop: the relay must be sending on while it is still receiving
            r = Sender(TP, SecurityConfig(plaintext=True)).send(data, *relay.address, "vm/relayed", streams=2,
                                                                 rate_limit_bytes_per_s=24e6, forward_to=to)  # fmt: skip
            digest = object_digest(data)
            assert r.digest == digest.hex() and r.relayed["to"] == to and r.relayed["mode"] == "full"
            for srv in (relay, dest):
                info = srv.store.latest("vm/relayed")
                assert info is not None and info.digest == digest
                assert bytes(srv.store.open_version(info)) == data.tobytes()
            # pipelined: the second hop finished within a moment of the first (not a whole second copy later)
            assert r.relayed["seconds"] < r.seconds


def _allow(to: str) -> dict:
    return {"security": {"relay_allow": [to]}}


def test_relay_reports_a_dead_next_hop_and_keeps_its_copy(tmp_path):
    data = np.random.default_rng(9).integers(0, 256, 3 << 20, dtype=np.uint8)
    with DataServer(server_config(tmp_path / "gone")) as gone:
        to = "{}:{}".format(*gone.address)
    with DataServer(server_config(tmp_path / "relay", node="relay", stall_timeout_s=2.0, max_stream_reconnects=2,
                                  sections=_allow(to))) as relay:  # fmt: skip
        with pytest.raises(TransferError, match="relaying to .* failed") as ei:
            Sender(TP, SecurityConfig(plaintext=True)).send(data, *relay.address, "k", forward_to=to)
        assert ei.value.code == C.ERR_UNAVAILABLE
        assert relay.store.latest("k").digest == object_digest(data)


def test_a_bad_forward_address_is_a_protocol_error(tmp_path):
    with DataServer(server_config(tmp_path / "relay")) as relay:
        with pytest.raises(TransferError, match="forward.to"):
            Sender(TP, SecurityConfig(plaintext=True)).send(
                b"x" * 10, *relay.address, "k", forward_to="nowhere"
            )
