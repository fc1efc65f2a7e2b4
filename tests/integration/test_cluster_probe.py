"""Peers probe each other over the (mutually authenticated) data port and learn each other's links."""

from __future__ import annotations

from dwcp.cluster.node import ClusterView, probe_handler
from dwcp.config import SecurityConfig, TransportConfig, from_dict
from dwcp.transport.dialer import Dialer
from dwcp.transport.server import DataServer


def test_probe_learns_liveness_rtt_and_the_peers_links(tmp_path, pki):
    rx, tx = pki["rx"], pki["tx"]
    cfg = from_dict({"node": {"id": "far", "region": "mid"}, "listen": {"host": "127.0.0.1", "data_port": 0},
                     "security": {"ca_cert": rx.ca_cert, "cert": rx.cert, "key": rx.key},
                     "storage": {"data_dir": str(tmp_path / "far")}})  # fmt: skip
    with DataServer(cfg) as srv:
        srv.register("probe", probe_handler(cfg.node, lambda: [["mid", "far-region", 0.005, 2e9],
                                                               ["elsewhere", "x", 0.1, 1.0]]))  # fmt: skip
        host, port = srv.address
        me = from_dict({"node": {"id": "tx", "region": "home"}, "security": {"plaintext": True},
                        "cluster": {"peers": [{"id": "far", "address": f"{host}:{port}", "region": "mid"},
                                              {"id": "dead", "address": "127.0.0.1:1", "region": "mid"}]}})  # fmt: skip
        v = ClusterView(me.cluster, me.node)
        tls = Dialer(TransportConfig(), SecurityConfig(ca_cert=tx.ca_cert, cert=tx.cert, key=tx.key))
        assert v.probe("far", tls) is True and v.peers["far"].healthy
        assert v.probe("dead", tls, timeout_s=1.0) is False and not v.peers["dead"].healthy
        # only the links that start at the peer's own region are taken
        assert v.graph.links(origin="mid") == [["mid", "far-region", 0.005, 2e9]]
        assert v.graph.links(origin="elsewhere") == []
        # without a certificate the probe is refused like any other connection
        assert v.probe("far", Dialer.plaintext()) is False


def test_ops_are_served_only_once_registered(tmp_path):
    import pytest

    from dwcp._testbase.transfer import server_config
    from dwcp.transport.framesock import FrameSocket
    from dwcp.wire import consts as C
    from dwcp.wire.messages import encode_control

    def ask(srv):
        fs, _ = Dialer.plaintext().dial(*srv.address)
        try:
            fs.send(encode_control(C.FRAME_HELLO, 9, {"v": 3, "role": "control", "op": "probe", "node": "x"}))
            return fs.recv_control(C.FRAME_WELCOME)[1]
        finally:
            fs.close()

    with DataServer(server_config(tmp_path / "a", node="a")) as srv:
        got = ask(srv)
        assert got["code"] == C.ERR_BAD_FIELD and got["message"] == "a does not serve op 'probe'"
        seen = []

        def handler(fs: FrameSocket, tid: int, hello: dict, identity, peer: str) -> None:
            seen.append((tid, hello["node"], identity, peer))
            fs.send(encode_control(C.FRAME_WELCOME, tid, {"mode": "probe", "node": "a"}))

        srv.register("probe", handler)
        assert ask(srv) == {"mode": "probe", "node": "a"}
        assert seen == [(9, "x", None, "plaintext:127.0.0.1")]  # plaintext: no verified identity
        with pytest.raises(ValueError, match="the data server's own"):
            srv.register("send", handler)
