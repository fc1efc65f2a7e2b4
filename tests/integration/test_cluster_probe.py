"""Peers probe each other over the (mutually authenticated) data port and learn each other's links."""

from __future__ import annotations

from dwcp.cluster.node import ClusterView
from dwcp.config import from_dict
from dwcp.security.tls import TLSConfig, client_context
from dwcp.transport.server import DataServer


def test_probe_learns_liveness_rtt_and_the_peers_links(tmp_path, pki):
    rx, tx = pki["rx"], pki["tx"]
    cfg = from_dict({"node": {"id": "far", "region": "mid"}, "listen": {"host": "127.0.0.1", "data_port": 0},
                     "security": {"ca_cert": rx.ca_cert, "cert": rx.cert, "key": rx.key},
                     "storage": {"data_dir": str(tmp_path / "far")}})  # fmt: skip
    with DataServer(cfg) as srv:
        srv.link_source = lambda: [["mid", "far-region", 0.005, 2e9], ["elsewhere", "x", 0.1, 1.0]]
        host, port = srv.address
        me = from_dict({"node": {"id": "tx", "region": "home"}, "security": {"plaintext": True},
                        "cluster": {"peers": [{"id": "far", "address": f"{host}:{port}", "region": "mid"},
                                              {"id": "dead", "address": "127.0.0.1:1", "region": "mid"}]}})  # fmt: skip
        v = ClusterView(me.cluster, me.node)
        ssl_ctx = client_context(TLSConfig(ca_cert=tx.ca_cert, cert=tx.cert, key=tx.key))
        assert v.probe("far", ssl_ctx=ssl_ctx) is True and v.peers["far"].healthy
        assert v.probe("dead", timeout_s=1.0) is False and not v.peers["dead"].healthy
        # only the links that start at the peer's own region are taken
        assert v.graph.links(origin="mid") == [["mid", "far-region", 0.005, 2e9]]
        assert v.graph.links(origin="elsewhere") == []
        # without a certificate the probe is refused like any other connection
        assert v.probe("far") is False
