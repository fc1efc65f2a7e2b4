"""Generated VM-like images: the test data of tests, benchmarks and `dwcp demo`.

An image is a sequence of 4 KiB pages: by default 60% zero pages, 30%
text-like pages (windows of a generated word corpus: compressible ~3-4x,
never identical), 10% random pages (incompressible).  ``dirty_version``
makes the next version the way a running VM does: a fraction of pages
changed in a few bytes each.  Everything is reproducible from a seed and
generated with numpy, so a 1 GiB image takes a second or two, not minutes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["vm_image", "dirty_version", "text_corpus"]

PAGE = 4096

_WORDS = (
    "the of and to in is that for it as with was on be by this are or at from an have not which but "
    "kernel page memory buffer socket stream chunk delta frame header offset length digest version "
    "config region node peer health status error warning info debug request response timeout retry "
    "0x7f3a 0000 ffff 1024 4096 65536 true false null none ok GET PUT /var/lib /usr/share /etc/dwcp "
    "user group mode size time date host port addr route table entry value key index count total"
).split()


def text_corpus(nbytes: int, rng: np.random.Generator) -> np.ndarray:
    """``nbytes`` of word-salad text with line structure (zstd ratio ~3-4x)."""
    words = np.array([w.encode() for w in _WORDS], dtype=object)
    out = bytearray()
    while len(out) < nbytes:
        idx = rng.integers(0, len(words), 4096)
        line_breaks = rng.random(4096) < 0.08
        parts = [words[i] + (b"\n" if br else b" ") for i, br in zip(idx, line_breaks)]
        out += b"".join(parts)
    return np.frombuffer(bytes(out[:nbytes]), dtype=np.uint8)


def vm_image(
    size: int,
    *,
    seed: int = 0,
    zero: float = 0.6,
    text: float = 0.3,
) -> np.ndarray:
    """A VM-memory-like image of ``size`` bytes (a multiple of 4096), as a uint8 array."""
    if size % PAGE:
        raise ValueError(f"size must be a multiple of {PAGE}")
    if not (0 <= zero and 0 <= text and zero + text <= 1):
        raise ValueError("zero and text fractions must be >= 0 and sum to <= 1")
    rng = np.random.default_rng(seed)
    npages = size // PAGE
    kind = rng.random(npages)  # < zero: zero page; < zero+text: text; else random
    img = np.zeros((npages, PAGE), dtype=np.uint8)
    text_idx = np.flatnonzero((kind >= zero) & (kind < zero + text))
    rand_idx = np.flatnonzero(kind >= zero + text)
    if len(text_idx):
        corpus = text_corpus(min(8 << 20, max(64 << 10, len(text_idx) * PAGE)), rng)
        starts = rng.integers(0, len(corpus) - PAGE, len(text_idx))
        windows = np.lib.stride_tricks.sliding_window_view(corpus, PAGE)
        for lo in range(0, len(text_idx), 8192):  # bounded temporaries
            img[text_idx[lo : lo + 8192]] = windows[starts[lo : lo + 8192]]
    if len(rand_idx):
        for lo in range(0, len(rand_idx), 8192):
            sl = rand_idx[lo : lo + 8192]
            img[sl] = rng.integers(0, 256, (len(sl), PAGE), dtype=np.uint8)
    return img.reshape(-1)


def dirty_version(
    image: np.ndarray,
    *,
    fraction: float = 0.05,
    seed: int = 1,
    max_bytes_per_page: int = 16,
) -> np.ndarray:
    """A copy of ``image`` with ``fraction`` of its pages changed in 1..max_bytes_per_page bytes."""
    if not 0 <= fraction <= 1:
        raise ValueError("fraction must be in [0, 1]")
    rng = np.random.default_rng(seed)
    new = image.copy()
    npages = len(new) // PAGE
    pages = rng.choice(npages, int(round(npages * fraction)), replace=False)
    view = new.reshape(-1, PAGE)
    for p in pages:
        k = int(rng.integers(1, max_bytes_per_page + 1))
        start = int(rng.integers(0, PAGE - k + 1))
        # a short run, as a counter or pointer update would change; never a no-op
        view[p, start : start + k] ^= rng.integers(1, 256, k, dtype=np.uint8)
    return new


def vm_definition(i: int, seed: int = 0) -> bytes:
    """A small JSON VM definition of one family: shared structure, different values (dictionary tests)."""
    import json
    import random

    r = random.Random(seed * 100_003 + i)
    doc = {
        "vm": f"vm-{i}", "cpus": r.choice([2, 4, 8, 16]), "memory_mb": r.choice([2048, 4096, 8192]),
        "disks": [{"path": f"/var/lib/images/vm-{i}-{j}.qcow2", "bus": "virtio", "cache": "none",
                   "size_gb": r.randint(10, 500)} for j in range(r.randint(1, 4))],
        "network": {"bridge": "br0", "model": "virtio-net", "mac": ":".join(f"{r.randrange(256):02x}" for _ in range(6))},
        "labels": {"team": r.choice(["storage", "compute", "edge"]), "env": r.choice(["prod", "staging", "dev"])},
        "boot": ["hd", "network"], "description": "a virtual machine definition with the fleet's usual settings",
    }  # fmt: skip
    return json.dumps(doc, indent=2).encode()
