"""The reference is the oracle: fast == ref on every kernel (results, outputs
and exceptions), round trips, and decoders that only ever return or raise
RemoteProtocolError, whatever bytes they are fed."""

from __future__ import annotations

import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st

from dwcp.errors import RemoteProtocolError


def _uleb(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def outcome(fn, *args):
    """What a call did: its result, or the type (and for protocol errors the code and message) it raised.

    Anything but RemoteProtocolError, ValueError or OverflowError propagates
    and fails the test."""
    try:
        return ("ok", fn(*args))
    except RemoteProtocolError as e:
        return ("RemoteProtocolError", e.code, str(e))
    except (ValueError, OverflowError) as e:
        return (type(e).__name__,)


def _mutate(rng: np.random.Generator, base: np.ndarray, nmut: int, maxlen: int) -> np.ndarray:
    """A copy of base with nmut runs rewritten (random bytes, or flipped bits)."""
    new = base.copy()
    n = len(new)
    for _ in range(nmut if n else 0):
        a = int(rng.integers(0, n))
        seg = new[a : a + int(rng.integers(1, maxlen + 1))]
        seg[:] = rng.integers(0, 256, len(seg), dtype=np.uint8) if rng.random() < 0.5 else seg ^ 1
    return new


@st.composite
def page_pairs(draw, min_size=1, max_size=4096 + 77):
    """An old page and a mostly-equal new one (a few mutated runs), sometimes all random."""
    n = draw(st.integers(min_size, max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.integers(0, 256, n, dtype=np.uint8) if draw(st.booleans()) else np.zeros(n, np.uint8)
    new = _mutate(rng, base, draw(st.integers(0, 12)), 40)
    if draw(st.integers(0, 9)) == 0:
        new = rng.integers(0, 256, n, dtype=np.uint8)
    return base.tobytes(), new.tobytes()


@st.composite
def chunk_pairs(draw, max_pages=9):
    """(page_size, old, new): a chunk (maybe with a short last page) and a VM-like next version."""
    ps = draw(st.sampled_from([512, 1024, 4096]))
    n = draw(st.integers(0, max_pages)) * ps + (draw(st.integers(1, ps - 1)) if draw(st.booleans()) else 0)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.integers(0, 256, n, dtype=np.uint8) if draw(st.booleans()) else np.zeros(n, np.uint8)
    return ps, base, _mutate(rng, base, draw(st.integers(0, 8)), draw(st.sampled_from([4, 64, 2 * ps])))


# -- parity -----------------------------------------------------------------------------


@given(page_pairs(max_size=9000), st.integers(0, 9000))
def test_xbzrle_encode_fast_equals_ref(fast, ref, pair, budget):
    old, new = pair
    a, b = bytearray(budget), bytearray(budget)
    ra, rb = fast.xbzrle_encode(old, new, a), ref.xbzrle_encode(old, new, b)
    assert ra == rb
    assert (ra == 0) == (old == new)  # 0 means identical, whatever the budget
    if ra > 0:
        assert a[:ra] == b[:rb]
    # -1 exactly when the unbounded encoding is longer than the budget
    full = bytearray(2 * len(old) + 8)
    m = ref.xbzrle_encode(old, new, full)
    assert ra == (m if m <= budget else -1)


@given(st.binary(max_size=20000), st.binary(max_size=20000), st.data())
def test_scan_dirty_fast_equals_ref(fast, ref, a, b, data):
    n = min(len(a), len(b))
    old, new = a[:n], bytearray(a[:n])
    for i in data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=5)) if n else []:
        new[i] = b[i % len(b)] if b else 0
    ps = data.draw(st.one_of(st.sampled_from([1, 7, 512, 4096, 65536]), st.integers(-2, 3000)))
    oa, ob = outcome(fast.scan_dirty, old, new, ps), outcome(ref.scan_dirty, old, new, ps)
    assert oa == ob
    if oa[0] == "ok":
        assert oa[1] == bytearray(int(old[i : i + ps] != new[i : i + ps]) for i in range(0, n, ps))


@given(chunk_pairs(), st.integers(0, 50000))
def test_delta_encode_fast_equals_ref(fast, ref, case, budget):
    ps, base, new = case
    bound = fast.delta_bound(len(base), ps)
    assert bound == ref.delta_bound(len(base), ps)
    full = np.zeros(bound, np.uint8)
    need = ref.delta_encode(base, new, full, ps)
    assert 0 <= need <= bound
    for size in (bound, min(budget, bound), max(need - 1, 0)):
        a, b = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
        ra, rb = fast.delta_encode(base, new, a, ps), ref.delta_encode(base, new, b, ps)
        assert ra == rb == (need if need <= size else -1)
        if ra > 0:
            assert (a[:ra] == b[:rb]).all() and (a[:ra] == full[:ra]).all()


@given(chunk_pairs(), st.data())
def test_pages_encode_fast_equals_ref(fast, ref, case, data):
    ps, theirs, mine = case
    npages = -(-len(mine) // ps)
    dirty = data.draw(
        st.one_of(
            st.just(bytes(fast.scan_dirty(theirs, mine, ps))), st.binary(min_size=npages, max_size=npages)
        )
    )
    bound = fast.delta_bound(len(mine), ps)
    for size in (bound, data.draw(st.integers(0, bound))):
        a, b = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
        ra, rb = fast.pages_encode(mine, dirty, a, ps), ref.pages_encode(mine, dirty, b, ps)
        assert ra == rb
        if ra > 0:
            assert (a[:ra] == b[:rb]).all()


@given(
    st.integers(-3, 3 * 4096),
    st.integers(-3, 3 * 4096),
    st.one_of(st.sampled_from([512, 4096, 65536]), st.integers(-1, 140000)),
    st.integers(0, 100),
)
def test_argument_errors_agree(fast, ref, n_old, n_new, ps, n_out):
    """Mismatched lengths and bad page sizes: the same exception type from both."""
    old, new, out = bytes(max(n_old, 0)), bytes([1]) * max(n_new, 0), bytearray(n_out)
    for name, args in [
        ("xbzrle_encode", (old, new, out)),
        ("xbzrle_decode", (b"\x00\x01\x01", bytearray(max(n_old, 0)))),
        ("scan_dirty", (old, new, ps)),
        ("delta_bound", (n_old, ps)),
        ("delta_encode", (old, new, out, ps)),
        ("pages_encode", (new, bytes(max(n_old, 0) % 7), out, ps)),
        ("delta_decode", (b"", old, bytearray(max(n_new, 0)), ps)),
    ]:
        assert outcome(getattr(fast, name), *args) == outcome(getattr(ref, name), *args), name


# -- round trips ---------------------------------------------------------------------


@given(page_pairs(max_size=9000))
def test_xbzrle_roundtrip(impl, pair):
    old, new = pair
    out = bytearray(2 * len(old) + 16)
    n = impl.xbzrle_encode(old, new, out)
    assert (n == 0) == (old == new)
    page = bytearray(old)
    covered = impl.xbzrle_decode(bytes(out[:n]), page)
    assert page == new
    # covered ends at the last changed byte
    last = max((i for i in range(len(old)) if old[i] != new[i]), default=-1)
    assert covered == last + 1


@given(chunk_pairs())
def test_delta_roundtrip(impl, case):
    ps, base, new = case
    out = np.empty(impl.delta_bound(len(base), ps), np.uint8)
    n = impl.delta_encode(base, new, out, ps)
    assert n >= 0 and (n == 0) == (base.tobytes() == new.tobytes())
    back = np.empty_like(base)
    patched = impl.delta_decode(out[:n], base, back, ps)
    assert (back == new).all()
    assert patched == sum(impl.scan_dirty(base, new, ps))
    inplace = base.copy()
    assert impl.delta_decode(out[:n], inplace, inplace, ps) == patched
    assert (inplace == new).all()


@given(chunk_pairs())
def test_pages_roundtrip(impl, case):
    ps, theirs, mine = case
    dirty = impl.scan_dirty(theirs, mine, ps)
    out = np.empty(impl.delta_bound(len(mine), ps), np.uint8)
    n = impl.pages_encode(mine, dirty, out, ps)
    assert n >= 0
    back = np.empty_like(mine)
    assert impl.delta_decode(out[:n], theirs, back, ps) == sum(dirty)
    assert (back == mine).all()


# -- decoders on hostile input --------------------------------------------------------


def _decode_both(fast, ref, payload: bytes, base: np.ndarray, ps: int) -> None:
    ra, rb = np.empty_like(base), np.empty_like(base)
    oa = outcome(fast.delta_decode, payload, base, ra, ps)
    ob = outcome(ref.delta_decode, payload, base, rb, ps)
    assert oa == ob
    assert oa[0] in ("ok", "RemoteProtocolError")
    event(oa[-1] if oa[0] != "ok" else "ok")  # --hypothesis-show-statistics: which paths were reached
    if oa[0] == "ok":
        assert (ra == rb).all()


@given(st.binary(max_size=300), st.integers(0, 600))
def test_xbzrle_decode_any_bytes(fast, ref, data, n):
    pa, pb = bytearray(range(256)) * 3, bytearray(range(256)) * 3
    oa, ob = (
        outcome(fast.xbzrle_decode, data, memoryview(pa)[:n]),
        outcome(ref.xbzrle_decode, data, memoryview(pb)[:n]),
    )
    assert oa == ob and oa[0] in ("ok", "RemoteProtocolError")
    assert pa == pb  # nothing written outside the page, the same inside


@st.composite
def xbzrle_like(draw, page_len):
    """Runs close to a valid encoding: mostly in bounds, sometimes 0, past the page or past the source."""
    out = bytearray()
    left = page_len
    for _ in range(draw(st.integers(0, 6))):
        z = draw(st.sampled_from([0, 1, 3, max(left // 2, 1), left, left + 1, 2**21 - 1]))
        nz = draw(st.sampled_from([1, 2, 5, max((left - z) // 2, 1), left - z, left - z + 1, 0]))
        z, nz = max(z, 0), max(nz, 0)
        out += _uleb(z) + _uleb(nz) + bytes([7]) * draw(st.sampled_from([nz, nz, nz, max(nz - 1, 0), nz + 1]))
        left -= z + nz
    return bytes(out)


@given(st.integers(1, 700).flatmap(lambda n: st.tuples(st.just(n), xbzrle_like(n))))
def test_xbzrle_decode_near_valid(fast, ref, case):
    n, enc = case
    pa, pb = bytearray(n), bytearray(n)
    oa, ob = outcome(fast.xbzrle_decode, enc, pa), outcome(ref.xbzrle_decode, enc, pb)
    assert oa == ob and oa[0] in ("ok", "RemoteProtocolError")
    event(oa[0])
    assert pa == pb


@given(st.binary(max_size=600), st.sampled_from([512, 4096]), st.integers(0, 3000))
def test_delta_decode_any_bytes(fast, ref, payload, ps, n):
    _decode_both(fast, ref, payload, np.arange(n, dtype=np.uint8), ps)


@st.composite
def delta_like(draw):
    """(page_size, base, payload): records with plausible skips, kinds and body lengths, each maybe a little off."""
    ps = draw(st.sampled_from([512, 1024]))
    n = draw(st.integers(1, 6)) * ps - draw(st.sampled_from([0, 0, 1, ps // 2, ps - 1]))
    npages = -(-n // ps)
    payload = bytearray()
    page = 0
    for _ in range(draw(st.integers(1, 5))):
        skip = draw(st.sampled_from([0, 0, 0, 1, 2, npages - page, 2**63, 2**64 - 1, 2**64]))
        payload += _uleb(max(skip, 0))
        page += max(skip, 0)
        ln = max(min(ps, n - page * ps), 0)
        kind = draw(st.sampled_from([1, 1, 1, 2, 2, 0, 3]))
        payload.append(kind)
        if kind == 1:
            body = draw(xbzrle_like(ln))
            nb = draw(st.sampled_from([len(body)] * 4 + [0, ln + 1, len(body) + 1, 2**64]))
            payload += _uleb(nb) + body
        elif kind == 2:
            payload += bytes([5]) * draw(st.sampled_from([ln, ln, ln, max(ln - 1, 0), 3]))
        page += 1
    if draw(st.booleans()):  # cut it short
        payload = payload[: draw(st.integers(0, len(payload)))]
    return ps, np.arange(n, dtype=np.uint8), bytes(payload)


@given(delta_like())
def test_delta_decode_near_valid(fast, ref, case):
    ps, base, payload = case
    _decode_both(fast, ref, payload, base, ps)


@given(chunk_pairs(max_pages=5), st.data())
def test_mutated_deltas(fast, ref, case, data):
    """Valid payloads with bytes replaced, inserted or cut: a result or RemoteProtocolError, the same on both."""
    ps, base, new = case
    out = np.empty(fast.delta_bound(len(base), ps), np.uint8)
    p = bytearray(out[: fast.delta_encode(base, new, out, ps)].tobytes())
    if p:
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(p) - 1))
            if data.draw(st.booleans()):
                p[i] = data.draw(st.integers(0, 255))
            else:
                p.insert(i, data.draw(st.integers(0, 255)))
        p = p[: data.draw(st.integers(0, len(p)))]
    _decode_both(fast, ref, bytes(p), base, ps)
