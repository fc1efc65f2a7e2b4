"""`dwcp dict`: train the zstd dictionaries small similar objects compress with, and list them.

    dwcp dict train --type TYPE [--size BYTES] [--config FILE | --dir DIR] [--json] FILES...
    dwcp dict ls [--config FILE | --dir DIR] [--json]

``train`` writes ``TYPE.zdict`` into the dictionaries directory: ``--dir``,
else ``[codec] dictionaries_dir`` of ``--config``, else
``<storage.data_dir>/dictionaries`` of ``--config``.  Each file is a sample
(files over 64 KiB are cut into 64 KiB samples).  Sends use it for keys that a
``[[codec.dictionary]]`` rule maps to TYPE; a receiver that lacks it gets it
once, with the first such send.
"""

from __future__ import annotations

import argparse
import json
import os

from dwcp.errors import ConfigError

__all__ = ["add_parser", "run"]


def _size(text: str) -> int:
    from .main import _size as parse

    return parse(text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dict", help="zstd dictionaries for many small similar objects (train, ls)")
    ds = p.add_subparsers(dest="dict_command", metavar="{train,ls}")
    t = ds.add_parser("train", help="train TYPE's dictionary from sample files (writes TYPE.zdict)")
    t.add_argument("files", nargs="+", metavar="FILE", help="samples: files like the objects to send")
    t.add_argument("--type", required=True, help="the dictionary type [[codec.dictionary]] rules name")
    t.add_argument("--size", type=_size, default=112640, help="dictionary size (default 110K, at most 1M)")
    ls = ds.add_parser("ls", help="the dictionaries in the directory: type, id, size, digest")
    for q in (t, ls):
        q.add_argument("--config", help="dwcp.toml: its dictionaries directory")
        q.add_argument("--dir", help="the dictionaries directory (default: from --config)")
        q.add_argument("--json", action="store_true", help="print one JSON object")


def _dir(args: argparse.Namespace) -> str:
    if args.dir:
        return os.path.abspath(args.dir)
    if args.config:
        from dwcp.config import load_toml

        return load_toml(args.config).dictionaries_dir
    raise ConfigError(
        "no dictionaries directory: pass --dir DIR, or --config FILE ([codec] dictionaries_dir)"
    )


def _describe(d) -> dict:
    return {"type": d.type, "id": d.id, "size": len(d.data), "digest": d.digest.hex()}


def run(args: argparse.Namespace) -> int:
    from dwcp.codec.dictionaries import MAX_DICT_BYTES, DictionaryStore, samples_of, train

    if args.dict_command is None:
        raise ConfigError("dwcp dict: say train or ls (dwcp dict --help)")
    where = _dir(args)
    store = DictionaryStore(where)
    if args.dict_command == "ls":
        listed = [_describe(x) for x in store.types()]
        if args.json:
            print(json.dumps({"dir": where, "dictionaries": listed}))
        else:
            print(f"{where}:" + ("" if listed else " no dictionaries"))
            for x in listed:
                print(f"  {x['type']:<20} id {x['id']:<10} {x['size']:>8} bytes  xxh3-128 {x['digest']}")
        return 0
    blobs = []
    for f in args.files:
        try:
            with open(f, "rb") as fh:
                blobs.append(fh.read(64 * MAX_DICT_BYTES))
        except OSError as exc:
            raise ConfigError(f"cannot read sample {f}: {exc.strerror or exc}") from None
    d = store.add(train(args.type, samples_of(blobs), args.size))
    out = _describe(d) | {"path": os.path.join(where, f"{d.type}.zdict"), "samples": len(args.files)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"trained {d.type}: {len(d.data)} bytes, id {d.id}, from {len(args.files)} files -> {out['path']}\n"
              f"sends use it for keys a rule maps to it:  [[codec.dictionary]]  pattern = \"...\"  "
              f"type = \"{d.type}\"")  # fmt: skip
    return 0
