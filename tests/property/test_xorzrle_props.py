"""The reference is the oracle: fast == ref on every kernel, round trips, and
decoders that never do anything but return or raise RemoteProtocolError."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from dwcp.errors import RemoteProtocolError


@st.composite
def page_pairs(draw, min_size=1, max_size=4096 + 77):
    """A base page and a mostly-equal new version (a few mutated runs), or random bytes."""
    n = draw(st.integers(min_size, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, n, dtype=np.uint8) if draw(st.booleans()) else np.zeros(n, np.uint8)
    new = base.copy()
    for _ in range(draw(st.integers(0, 12))):
        a = int(rng.integers(0, n))
        ln = int(rng.integers(1, 40))
        new[a : a + ln] = rng.integers(0, 256, len(new[a : a + ln]), dtype=np.uint8)
    if draw(st.integers(0, 9)) == 0:
        new = rng.integers(0, 256, n, dtype=np.uint8)
    return base.tobytes(), new.tobytes()


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except RemoteProtocolError as e:
        return ("RemoteProtocolError", e.code, str(e))
    except ValueError:
        return ("ValueError",)


@given(page_pairs(max_size=9000), st.integers(0, 9000))
def test_xbzrle_encode_fast_equals_ref(fast, ref, pair, budget):
    old, new = pair
    a, b = bytearray(budget), bytearray(budget)
    ra, rb = fast.xbzrle_encode(old, new, a), ref.xbzrle_encode(old, new, b)
    assert ra == rb
    if ra > 0:
        assert a[:ra] == b[:rb]
        page = bytearray(old)
        assert fast.xbzrle_decode(bytes(a[:ra]), page) <= len(old)
        assert page == new
    if ra == 0:  # 0 means identical, whatever the budget
        assert old == new


@given(page_pairs(max_size=9000))
def test_xbzrle_roundtrip(impl, pair):
    old, new = pair
    out = bytearray(2 * len(old) + 16)
    n = impl.xbzrle_encode(old, new, out)
    assert (n == 0) == (old == new)
    page = bytearray(old)
    impl.xbzrle_decode(bytes(out[:n]), page)
    assert page == new


@given(st.binary(max_size=300), st.integers(1, 600))
def test_xbzrle_decode_any_bytes(fast, ref, data, n):
    pa, pb = bytearray(n), bytearray(n)
    oa, ob = outcome(fast.xbzrle_decode, data, pa), outcome(ref.xbzrle_decode, data, pb)
    assert oa == ob
    if oa[0] == "ok":
        assert pa == pb


@st.composite
def chunk_pairs(draw):
    ps = draw(st.sampled_from([512, 1024, 4096]))
    npages = draw(st.integers(0, 9))
    extra = draw(st.integers(0, ps - 1)) if draw(st.booleans()) else 0
    n = npages * ps + extra
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.integers(0, 256, n, dtype=np.uint8) if draw(st.booleans()) else np.zeros(n, np.uint8)
    new = base.copy()
    for _ in range(draw(st.integers(0, 8))):
        if n == 0:
            break
        a = int(rng.integers(0, n))
        ln = int(rng.integers(1, ps * 2))
        seg = new[a : a + ln]
        seg[:] = rng.integers(0, 256, len(seg), dtype=np.uint8) if rng.random() < 0.3 else seg ^ 1
    return ps, base, new


@given(chunk_pairs(), st.integers(0, 50000))
def test_delta_encode_fast_equals_ref(fast, ref, case, budget):
    ps, base, new = case
    bound = fast.delta_bound(len(base), ps)
    assert bound == ref.delta_bound(len(base), ps)
    for size in (bound, min(budget, bound)):
        a, b = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
        ra, rb = fast.delta_encode(base, new, a, ps), ref.delta_encode(base, new, b, ps)
        assert ra == rb
        if ra > 0:
            assert (a[:ra] == b[:rb]).all()
    assert ra >= 0 or size < bound


@given(chunk_pairs())
def test_delta_roundtrip(impl, case):
    ps, base, new = case
    out = np.empty(impl.delta_bound(len(base), ps), np.uint8)
    n = impl.delta_encode(base, new, out, ps)
    assert n >= 0 and (n == 0) == (base.tobytes() == new.tobytes())
    back = np.empty_like(base)
    impl.delta_decode(out[:n], base, back, ps)
    assert (back == new).all()
    # in place, and scan_dirty agrees with the records
    inplace = base.copy()
    patched = impl.delta_decode(out[:n], inplace, inplace, ps)
    assert (inplace == new).all()
    assert patched == sum(impl.scan_dirty(base, new, ps))


@given(chunk_pairs())
def test_pages_encode_roundtrip_and_parity(fast, ref, case):
    ps, theirs, mine = case
    dirty = fast.scan_dirty(theirs, mine, ps)
    assert dirty == ref.scan_dirty(theirs, mine, ps)
    a = np.empty(fast.delta_bound(len(mine), ps), np.uint8)
    b = np.empty_like(a)
    n = fast.pages_encode(mine, dirty, a, ps)
    assert n == ref.pages_encode(mine, dirty, b, ps) and (a[:n] == b[:n]).all()
    back = np.empty_like(mine)
    fast.delta_decode(a[:n], theirs, back, ps)
    assert (back == mine).all()


@given(st.binary(max_size=600), st.sampled_from([512, 4096]), st.integers(0, 3000))
def test_delta_decode_any_bytes(fast, ref, payload, ps, n):
    base = np.arange(n, dtype=np.uint8)
    oa = outcome(fast.delta_decode, payload, base, np.empty_like(base), ps)
    ob = outcome(ref.delta_decode, payload, base, np.empty_like(base), ps)
    assert oa == ob


@given(chunk_pairs(), st.data())
def test_mutated_deltas_never_crash(fast, ref, case, data):
    """Valid payloads with bytes flipped or cut: a result or RemoteProtocolError, the same on both."""
    ps, base, new = case
    out = np.empty(fast.delta_bound(len(base), ps), np.uint8)
    n = fast.delta_encode(base, new, out, ps)
    p = bytearray(out[:n].tobytes())
    if p:
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(p) - 1))
            p[i] = data.draw(st.integers(0, 255))
        p = p[: data.draw(st.integers(0, len(p)))]
    ra = np.empty_like(base)
    rb = np.empty_like(base)
    oa = outcome(fast.delta_decode, bytes(p), base, ra, ps)
    ob = outcome(ref.delta_decode, bytes(p), base, rb, ps)
    assert oa == ob
    if oa[0] == "ok":
        assert (ra == rb).all()
