"""Fixtures for loopback transfer tests: in-process receivers, certificates, images."""

from __future__ import annotations

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
