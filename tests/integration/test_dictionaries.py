"""zstd dictionaries in real transfers on loopback: `dwcp dict train`, a [[codec.dictionary]] rule picks
the dictionary, the receiver gets it once over the data port and keeps it; the byte saving against no
dictionary; and a missing, corrupt or forged dictionary is a clear error, never a wrong object."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dwcp._testbase.images import vm_definition as vm_json
from dwcp._testbase.transfer import server_config, stored, tx_config
from dwcp.cli.main import main as cli
from dwcp.codec.dictionaries import DictionaryStore, samples_of, train
from dwcp.config import CodecSettings, DictRule, SecurityConfig
from dwcp.errors import ConfigError, DictionaryError
from dwcp.transport.sender import Sender, TransferError
from dwcp.transport.server import DataServer

PLAIN = SecurityConfig(plaintext=True)
RULES = CodecSettings(zstd_level=3, dictionary=(DictRule("cfg/*", "vmcfg"),))
NO_RULES = CodecSettings(zstd_level=3)


@pytest.fixture
def dict_dir(tmp_path):
    """A sender's dictionaries directory with vmcfg.zdict, trained by `dwcp dict train` from 100 files."""
    samples = tmp_path / "samples"
    samples.mkdir()
    for i in range(100):
        (samples / f"vm-{i}.json").write_bytes(vm_json(i, seed=1))
    out = tmp_path / "tx-dicts"
    assert cli(["dict", "train", "--type", "vmcfg", "--size", "4K", "--dir", str(out),
                *map(str, sorted(samples.iterdir()))]) == 0  # fmt: skip
    return out


def send_all(sender: Sender, srv: DataServer, prefix: str, n: int = 100, seed: int = 2) -> list:
    return [sender.send(vm_json(i, seed), *srv.address, f"{prefix}/{i}", streams=1) for i in range(n)]


def test_small_similar_objects_travel_in_fewer_bytes_and_the_dictionary_travels_once(tmp_path, dict_dir):
    with DataServer(server_config(tmp_path / "rx")) as srv:
        with_dict = Sender(tx_config(), PLAIN, codec=RULES, dictionaries=DictionaryStore(str(dict_dir)))
        got = send_all(with_dict, srv, "cfg")
        without = Sender(tx_config(), PLAIN, codec=NO_RULES)
        base = send_all(without, srv, "plain")
        for i in range(100):
            assert stored(srv, f"cfg/{i}") == vm_json(i, 2) == stored(srv, f"plain/{i}")
        assert [r.dictionary.sent for r in got if r.dictionary] == [True] + [False] * 99
        assert srv.stats["dictionaries_received_total"] == 1
        d = DictionaryStore(str(dict_dir)).for_type("vmcfg")
        assert d is not None and got[0].dictionary.id == d.id
        assert all(r.dictionary is None for r in base)
        # the first send's wire bytes include the dictionary (64-byte header + its bytes)
        wire_dict = sum(r.wire_bytes for r in got)
        wire_plain = sum(r.wire_bytes for r in base)
        assert got[0].wire_bytes > len(d.data) > 4 * got[1].wire_bytes
        assert wire_dict < 0.6 * wire_plain, (wire_dict, wire_plain)
        assert wire_dict - len(d.data) - 64 < 0.4 * wire_plain, (wire_dict, wire_plain)
        kept = tmp_path / "rx" / "dictionaries" / "received" / f"{d.id}-{d.digest.hex()}.zdict"
        assert kept.read_bytes() == d.data
    # a restarted receiver still holds it: nothing travels again
    with DataServer(server_config(tmp_path / "rx")) as srv:
        r = with_dict.send(vm_json(99, 2), *srv.address, "cfg/99", streams=1)
        assert r.dictionary.sent is False and stored(srv, "cfg/99") == vm_json(99, 2)
        assert srv.stats["dictionaries_received_total"] == 0


def test_a_rule_naming_an_untrained_type_fails_before_connecting(tmp_path, dict_dir):
    codec = replace(RULES, dictionary=(DictRule("cfg/*", "manifests"),))
    with DataServer(server_config(tmp_path / "rx")) as srv:
        s = Sender(tx_config(), PLAIN, codec=codec, dictionaries=DictionaryStore(str(dict_dir)))
        with pytest.raises(
            ConfigError, match=r"no manifests\.zdict: train one with `dwcp dict train --type manifests"
        ):
            s.send(vm_json(1), *srv.address, "cfg/1", streams=1)
        assert srv.stats["connections_total"] == 0 and srv.store.latest("cfg/1") is None
        bare = Sender(tx_config(), PLAIN, codec=RULES)  # rules but no directory (no --config)
        with pytest.raises(ConfigError, match="no dictionaries directory"):
            bare.send(vm_json(1), *srv.address, "cfg/1", streams=1)


def test_a_corrupt_trained_dictionary_is_an_error_naming_its_file(tmp_path, dict_dir):
    (dict_dir / "vmcfg.zdict").write_bytes(b"\x37\xa4\x30\xec" + b"\0" * 400)
    with DataServer(server_config(tmp_path / "rx")) as srv:
        s = Sender(tx_config(), PLAIN, codec=RULES, dictionaries=DictionaryStore(str(dict_dir)))
        with pytest.raises(DictionaryError, match=r"vmcfg\.zdict: .*dwcp dict train"):
            s.send(vm_json(1), *srv.address, "cfg/1", streams=1)
        assert srv.store.latest("cfg/1") is None


def test_a_dictionary_that_is_not_what_hello_announced_fails_the_send_and_stores_nothing(tmp_path, dict_dir):
    store = DictionaryStore(str(dict_dir))
    real = store.for_type("vmcfg")
    assert real is not None
    other = train("vmcfg", samples_of(vm_json(i, seed=4) for i in range(100)), 8192)
    # a sender whose "vmcfg" names the real dictionary's id and digest but carries other bytes
    forged = replace(real, data=other.data, zdict=other.zdict)
    store._by_type["vmcfg"] = forged
    store.refresh = lambda: None  # keep the forgery
    with DataServer(server_config(tmp_path / "rx")) as srv:
        s = Sender(tx_config(), PLAIN, codec=RULES, dictionaries=store)
        with pytest.raises(TransferError, match=r"dictionary .*(bytes|hash)") as ei:
            s.send(vm_json(1), *srv.address, "cfg/1", streams=1)
        assert "code 11" in str(ei.value)  # ERR_UNKNOWN_DICT
        assert srv.store.latest("cfg/1") is None
        assert not (tmp_path / "rx" / "dictionaries" / "received").exists()


def test_dict_ls_lists_what_train_wrote(dict_dir, capsys):
    assert cli(["dict", "ls", "--dir", str(dict_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    d = DictionaryStore(str(dict_dir)).for_type("vmcfg")
    assert d is not None
    assert out["dictionaries"] == [
        {"type": "vmcfg", "id": d.id, "size": len(d.data), "digest": d.digest.hex()}
    ]
    assert (
        cli(["dict", "train", "--type", "vmcfg", "--dir", str(dict_dir), str(dict_dir / "vmcfg.zdict")]) == 3
    )
    assert "need at least 8" in capsys.readouterr().err


def test_a_running_daemon_takes_new_rules_at_a_reload_and_the_directory_at_a_restart(tmp_path, dict_dir):
    from dwcp.config import load_toml
    from dwcp.daemon.main import Daemon

    path = tmp_path / "dwcp.toml"
    base = (f'[node]\nid = "tx"\n[listen]\nhost = "127.0.0.1"\ndata_port = 0\nmetrics_port = -1\n'
            f'[security]\nplaintext = true\n[storage]\ndata_dir = "{tmp_path / "tx"}"\n'
            f'[codec]\nzstd_level = 3\ndictionaries_dir = "{dict_dir}"\n')  # fmt: skip
    path.write_text(base)
    src = tmp_path / "obj"
    src.write_bytes(vm_json(5, 2))
    with DataServer(server_config(tmp_path / "rx")) as srv:
        d = Daemon(load_toml(str(path)), config_path=str(path))
        d.server.start()
        try:
            to = "{}:{}".format(*srv.address)
            send = {"op": "send", "to": to, "path": str(src), "key": "cfg/5", "streams": 1}
            assert d.handle(send)["dictionary"] is None
            path.write_text(base.replace(f'dictionaries_dir = "{dict_dir}"\n', f'dictionaries_dir = "{tmp_path}"\n')
                            + '[[codec.dictionary]]\npattern = "cfg/*"\ntype = "vmcfg"\n')  # fmt: skip
            r = d.reload()
            assert r["ok"] and r["applied"] == [
                'codec.dictionary: [] -> [{"pattern": "cfg/*", "type": "vmcfg"}]'
            ]
            assert r["needs_restart"] == [f'codec.dictionaries_dir: "{dict_dir}" -> "{tmp_path}"']
            got = d.handle(
                send
            )  # the rule from the reload, the dictionary from the directory it started with
            assert got["dictionary"]["type"] == "vmcfg" and got["dictionary"]["sent"] is True
            assert stored(srv, "cfg/5") == vm_json(5, 2)
        finally:
            d.server.close()
