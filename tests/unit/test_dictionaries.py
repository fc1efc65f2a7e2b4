"""dwcp.codec.dictionaries by its rules: training, the directory, verification of what a peer sends,
and the codec with a dictionary (the sessions' side: test_session_dict.py; transfers: integration)."""

from __future__ import annotations

import logging
import os

import pytest
import xxhash

from dwcp._backend import impl as K
from dwcp._testbase.images import vm_definition as vm_json
from dwcp.codec import ChunkDecoder, ChunkEncoder, CodecConfig
from dwcp.codec.compress import _CONTEXTS
from dwcp.codec.dictionaries import Dictionary, DictionaryStore, samples_of, train
from dwcp.config import DictRule
from dwcp.errors import ConfigError, DictionaryError, RemoteProtocolError
from dwcp.wire import consts as C


@pytest.fixture(scope="module")
def trained() -> Dictionary:
    return train("vmcfg", samples_of(vm_json(i) for i in range(200)), 8192)


def frame(d: Dictionary | None, data: bytes):
    enc = ChunkEncoder(CodecConfig(zstd_level=3))
    f = enc.encode(data, dictionary=d)
    return f, K.parse_header(f.header)


# -- training --------------------------------------------------------------------------------------


def test_training_says_what_is_missing():
    with pytest.raises(ConfigError, match="need at least 8"):
        train("vm", [b"abc"] * 3)
    with pytest.raises(ConfigError, match="4x the size"):
        train("vm", [b"abcdefgh"] * 20, 4096)
    with pytest.raises(ConfigError, match="letters, digits"):
        train("a b", [b"x" * 1000] * 100)
    with pytest.raises(ConfigError, match="between 256"):
        train("vm", [b"x" * 1000] * 100, 100)


def test_samples_cut_long_files_and_skip_empty_ones():
    assert samples_of([b"", b"ab", b"x" * 10], sample_bytes=4) == [b"ab", b"xxxx", b"xxxx", b"xx"]


def test_a_dictionary_is_parsed_whole_or_refused(trained):
    assert Dictionary.of(trained.data, "t").id == trained.id
    assert trained.digest == xxhash.xxh3_128_digest(trained.data)
    for bad, why in [(b"", "1 to"), (b"\0" * 600, "magic"), (trained.data[:20], "not a zstd dictionary")]:
        with pytest.raises(DictionaryError, match=why):
            Dictionary.of(bad)


# -- the codec with a dictionary -------------------------------------------------------------------


def test_a_dictionary_shrinks_small_similar_objects_and_decodes_only_with_it(trained):
    data = vm_json(10_000, seed=7)
    plain, _ = frame(None, data)
    f, h = frame(trained, data)
    assert f.codec == C.CODEC_ZSTD_DICT and h.dict_id == trained.id
    assert f.enc_len < 0.6 * plain.enc_len, (f.enc_len, plain.enc_len)
    assert bytes(ChunkDecoder().decode(h, bytes(f.payload), dictionary=trained)) == data
    with pytest.raises(RemoteProtocolError) as ei:  # not announced: never decoded by guesswork
        ChunkDecoder().decode(h, bytes(f.payload))
    assert ei.value.code == C.ERR_UNKNOWN_DICT
    other = train("other", samples_of(vm_json(i, seed=3) for i in range(200)), 8192)
    with pytest.raises(RemoteProtocolError) as ei:
        ChunkDecoder().decode(h, bytes(f.payload), dictionary=other)
    assert ei.value.code == C.ERR_UNKNOWN_DICT


def test_deltas_and_sparse_chunks_do_not_use_the_dictionary(trained):
    data = bytes(8192) + vm_json(3) + bytes(8192 - len(vm_json(3)))  # half zero pages: sparse
    f, h = frame(trained, data)
    assert f.codec in (C.CODEC_SPARSE, C.CODEC_SPARSE_ZSTD) and h.dict_id == 0


def test_two_dictionaries_with_one_zstd_id_never_share_a_context(trained):
    """zstd ids are random 32-bit numbers: contexts are cached per dictionary, not per id."""
    other = train("other", samples_of(vm_json(i, seed=5) for i in range(200)), 8192)
    forged = bytearray(other.data)
    forged[4:8] = trained.id.to_bytes(4, "little")  # the dictionary header's id field
    twin = Dictionary.of(bytes(forged), "twin")
    assert twin.id == trained.id and twin.digest != trained.digest
    data = vm_json(77, seed=9)
    a = _CONTEXTS.compressor(3, trained.zdict).compress(data)
    b = _CONTEXTS.compressor(3, twin.zdict).compress(data)
    assert a != b
    assert _CONTEXTS.decompressor(twin.zdict).decompress(b) == data
    assert _CONTEXTS.decompressor(trained.zdict).decompress(a) == data


# -- the store and its directory -------------------------------------------------------------------


def test_a_trained_dictionary_is_written_and_read_back(tmp_path, trained):
    s = DictionaryStore(str(tmp_path / "d"))
    s.add(trained)
    f = tmp_path / "d" / "vmcfg.zdict"
    assert f.read_bytes() == trained.data and f.stat().st_mode & 0o777 == 0o644
    again = DictionaryStore(str(tmp_path / "d"))
    d = again.for_type("vmcfg")
    assert d is not None and (d.id, d.digest) == (trained.id, trained.digest)
    assert again.get(trained.id, trained.digest) is d and again.get(trained.id, b"\0" * 16) is None
    assert [x.type for x in again.types()] == ["vmcfg"] and again.for_type("nope") is None


def test_keys_pick_their_dictionary_by_the_first_matching_rule(tmp_path, trained):
    s = DictionaryStore(str(tmp_path))
    s.add(trained)
    rules = (DictRule("vm/*.json", "vmcfg"), DictRule("vm/*", "missing"))
    assert s.for_key("vm/a.json", rules) is s.for_type("vmcfg")
    assert s.for_key("images/a.json", rules) is None
    with pytest.raises(ConfigError, match=r"rule 2 .*dwcp dict train --type missing"):
        s.for_key("vm/a.bin", rules)
    assert s.for_key("anything", (), explicit="vmcfg") is s.for_type("vmcfg")
    with pytest.raises(ConfigError, match="asked for type 'x'"):
        s.for_key("anything", (), explicit="x")


def test_a_dictionary_trained_while_running_is_used_by_the_next_lookup(tmp_path, trained):
    running = DictionaryStore(str(tmp_path))
    assert running.for_type("vmcfg") is None
    DictionaryStore(str(tmp_path)).add(trained)  # `dwcp dict train` in another process
    assert running.for_type("vmcfg") is not None


def test_a_corrupt_trained_file_is_an_error_for_its_sends_only(tmp_path, trained, caplog):
    s = DictionaryStore(str(tmp_path))
    s.add(trained)
    (tmp_path / "broken.zdict").write_bytes(b"not a dictionary at all" * 20)
    with caplog.at_level(logging.WARNING, logger="dwcp.codec.dictionaries"):
        fresh = DictionaryStore(str(tmp_path))
        with pytest.raises(DictionaryError, match=r"broken\.zdict.*dwcp dict train"):
            fresh.for_type("broken")
        assert fresh.for_type("vmcfg") is not None
    assert "broken.zdict" in caplog.text


def test_what_a_peer_sends_is_kept_only_as_announced(tmp_path, trained):
    s = DictionaryStore(str(tmp_path))
    data, did, dg = trained.data, trained.id, trained.digest
    for args, why in [
        ((did, dg, len(data) + 1, data), "bytes, HELLO announced"),
        ((did, b"\1" * 16, len(data), data), "hash to"),
        ((did + 1, dg, len(data), data), "has zstd id"),
    ]:
        with pytest.raises(RemoteProtocolError, match=why) as ei:
            s.receive(*args)
        assert ei.value.code == C.ERR_UNKNOWN_DICT
    junk = os.urandom(300)
    with pytest.raises(RemoteProtocolError, match="not a zstd dictionary"):
        s.receive(did, xxhash.xxh3_128_digest(junk), 300, junk)
    assert len(s) == 0 and not (tmp_path / "received").exists()
    d = s.receive(did, dg, len(data), memoryview(data))
    assert s.get(did, dg) is d and s.received == 1
    assert (tmp_path / "received" / f"{did}-{dg.hex()}.zdict").read_bytes() == data
    assert DictionaryStore(str(tmp_path)).get(did, dg) is not None  # kept across a restart


def test_a_rotted_received_dictionary_is_dropped_and_asked_for_again(tmp_path, trained, caplog):
    s = DictionaryStore(str(tmp_path))
    s.receive(trained.id, trained.digest, len(trained.data), trained.data)
    f = tmp_path / "received" / f"{trained.id}-{trained.digest.hex()}.zdict"
    rot = bytearray(trained.data)
    rot[-5] ^= 0xFF  # in the content part: still a dictionary, no longer these bytes
    f.write_bytes(bytes(rot))
    with caplog.at_level(logging.WARNING, logger="dwcp.codec.dictionaries"):
        assert DictionaryStore(str(tmp_path)).get(trained.id, trained.digest) is None
    assert not f.exists() and "no longer the dictionary its name says" in caplog.text


def test_an_in_memory_store_holds_what_it_is_given(trained):
    s = DictionaryStore()
    assert s.for_type("vmcfg") is None
    s.add(trained)
    assert s.for_type("vmcfg") is trained
    with pytest.raises(ConfigError, match="holds no x.zdict"):
        s.for_key("k", (DictRule("*", "x"),))
