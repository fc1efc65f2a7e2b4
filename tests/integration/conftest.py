"""Fixtures for loopback transfer tests: in-process receivers, certificates, images."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from dwcp._testbase.images import vm_image


@pytest.fixture
def image() -> np.ndarray:
    return vm_image(8 << 20, seed=5)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A cluster CA with two nodes, and a foreign CA with one node."""
    from dwcp.security.certs import init_ca, issue_node

    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca", cluster_name="test")
    init_ca(root / "evil", cluster_name="evil")
    return {
        "rx": issue_node(root / "ca", "rx"),
        "tx": issue_node(root / "ca", "tx"),
        "mallory": issue_node(root / "evil", "mallory"),
    }


@pytest.fixture
def small_tmpfs(tmp_path):
    """``mount(size)`` mounts a tmpfs of ``size`` ("8m") under tmp_path and returns it: a disk that fills.

    Needs root (skips otherwise); unmounted after the test.
    """
    mounts = []

    def mount(size: str):
        if os.geteuid() != 0:
            pytest.skip("needs root to mount a small tmpfs")
        mnt = tmp_path / f"small{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True
        )
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounts.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for m in mounts:
            subprocess.run(["umount", "-l", str(m)], check=False)


@pytest.fixture
def server(tmp_path):
    """An in-process plaintext receiver on 127.0.0.1 (dwcp._testbase.transfer.server_config)."""
    from dwcp._testbase.transfer import server_config
    from dwcp.transport.server import DataServer

    srv = DataServer(server_config(tmp_path / "rx"))
    srv.start()
    yield srv
    srv.close()


@pytest.fixture
def daemons(tmp_path):
    """``daemons(cls, n, *args)``: a loopback cluster of ``n`` real daemons with the Raft catalog
    (``cls``: dwcp._testbase.daemons.Cluster or a subclass, given ``*args`` after root and n), once it
    has a leader; every one made is killed after the test."""
    made = []

    def make(cls, n: int, *args):
        root = tmp_path / f"cluster{len(made)}"
        root.mkdir()
        c = cls(str(root), n, *args)
        made.append(c)
        c.wait(c.leader, what="a first leader")
        return c

    yield make
    for c in made:
        c.close()
