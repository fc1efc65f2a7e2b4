"""``<state_dir>/tune.json``: what ``dwcp tune --apply`` writes and the transport reads.

The document is ``{"version": 1, "rtt_s": ..., "profiles": [StreamProfile.to_dict(), ...]}``.
Writing is atomic (a temporary file in the same directory, fsync, rename,
fsync of the directory): a reader sees the old file or the new one, never
half of one.  Reading never raises: a missing file means "not tuned", a
damaged one is logged and ignored, and the transport keeps its defaults.
"""

from __future__ import annotations

import json
import logging
import os

from dwcp.durable import write_atomic

__all__ = ["TUNE_FILE", "FORMAT_VERSION", "DEFAULT_STATE_DIR", "apply_profiles", "load_profile"]

log = logging.getLogger("dwcp.tune")

TUNE_FILE = "tune.json"
FORMAT_VERSION = 1
DEFAULT_STATE_DIR = "/var/lib/dwcp"


def apply_profiles(state_dir: str, profiles: list[dict], *, rtt_s: float) -> str:
    """Write ``profiles`` to ``<state_dir>/tune.json`` (mode 0644) atomically; return its path."""
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, TUNE_FILE)
    data = json.dumps({"version": FORMAT_VERSION, "rtt_s": rtt_s, "profiles": profiles}, indent=1) + "\n"
    write_atomic(path, data, mode=0o644)  # 0644: the transport may run as another user
    return path


def _valid(doc: object) -> list[dict]:
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a version {FORMAT_VERSION} tune file")
    profiles = doc.get("profiles")
    if not isinstance(profiles, list) or not all(
        isinstance(p, dict) and isinstance(p.get("nic"), str) for p in profiles
    ):
        raise ValueError("profiles must be a list of objects with a 'nic'")
    return profiles


def load_profile(state_dir: str, nic: str | None = None) -> dict | None:
    """The applied profile for ``nic`` (None: the first one); None when there is none.

    Never raises: a missing file is silent, a damaged one logs a warning.
    """
    path = os.path.join(state_dir, TUNE_FILE)
    try:
        with open(path, "rb") as f:
            profiles = _valid(json.loads(f.read()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning("ignoring %s: %s", path, exc)
        return None
    return next((p for p in profiles if nic is None or p["nic"] == nic), None)
