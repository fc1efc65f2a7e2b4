"""Shared fixtures: the ``impl`` fixture over both backends, --run-slow, and
the hypothesis profile (HYPOTHESIS_PROFILE=ci|dev|thorough)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=5000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("DWCP_SLOW_TESTS"):
        return
    skip = pytest.mark.skip(reason="slow: needs --run-slow or DWCP_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test taking ``seed`` in a module with a ``SEEDS`` table ({test name: (fast count, slow count)})
    runs over range(fast count), or range(slow count) with --run-slow / DWCP_SLOW_TESTS=1."""
    table = getattr(metafunc.module, "SEEDS", None)
    if (
        "seed" not in metafunc.fixturenames
        or table is None
        or hasattr(metafunc.module, "pytest_generate_tests")
    ):
        return
    slow = metafunc.config.getoption("--run-slow") or bool(os.environ.get("DWCP_SLOW_TESTS"))
    fast_n, slow_n = table[metafunc.function.__name__]
    metafunc.parametrize("seed", range(slow_n if slow else fast_n))


def _impls() -> list[str]:
    # Under DWCP_IMPL=ref (the CI's second pass) only the reference runs.
    if os.environ.get("DWCP_IMPL", "auto") == "ref":
        return ["ref"]
    return ["ref", "fast"]


@pytest.fixture(scope="session", params=_impls())
def impl(request: pytest.FixtureRequest):
    """Every kernel of one backend, as a namespace (see dwcp._backend.load)."""
    from dwcp._backend import load

    return load(request.param)


@pytest.fixture(scope="session")
def fast():
    from dwcp._backend import load

    return load("fast")


@pytest.fixture(scope="session")
def ref():
    from dwcp._backend import load

    return load("ref")


@pytest.fixture(scope="session")
def aead_both(fast, ref):
    """Both backends with AES-256-GCM loaded (the libcrypto Python's ssl uses), by name."""
    from dwcp.security import aead

    ok, why = aead.available()
    if not ok:
        pytest.skip(f"no AES-GCM here: {why}")
    path = aead._libcrypto()
    assert path is not None and fast.aead_load(path) and ref.aead_load(path)
    return {"fast": fast, "ref": ref}


# -- the pump (dwcp/_fast/pump.h and its twin): every backend x kind ------------------------------------
PUMP_CASES = [("fast", "uring"), ("fast", "epoll"), ("ref", "uring"), ("ref", "epoll")]


def skip_unless_uring(fast, backend: str, kind: str) -> None:
    """Skip the fast uring case where io_uring does not work here."""
    if backend == "fast" and kind == "uring" and not fast.uring_available():
        pytest.skip("io_uring does not work here (fast.uring_available() is False): no fast uring pump")


@pytest.fixture(params=PUMP_CASES, ids=[f"{b}-{k}" for b, k in PUMP_CASES])
def case(request, fast, ref):
    """(backend namespace, kind) of a pump."""
    backend, kind = request.param
    skip_unless_uring(fast, backend, kind)
    return {"fast": fast, "ref": ref}[backend], kind


@pytest.fixture
def make_pump(case):
    """make_pump(slots, block): a pump of this case, closed at the end of the test."""
    impl, kind = case
    made = []

    def make(slots: int = 4, block: int = 4096):
        p = impl.Pump(kind, slots, block)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture(scope="module")
def pumps(fast, ref):
    """pumps(backend, kind, block): one 4-slot pump per key for the whole module, closed at its end."""
    made: dict[tuple[str, str, int], object] = {}

    def get(backend: str, kind: str, block: int):
        skip_unless_uring(fast, backend, kind)
        key = (backend, kind, block)
        if key not in made:
            made[key] = {"fast": fast, "ref": ref}[backend].Pump(kind, 4, block)
        return made[key]

    yield get
    for p in made.values():
        p.close()  # type: ignore[attr-defined]
