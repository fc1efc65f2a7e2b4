"""`dwcp certs init|issue`: the cluster CA and node certificates for mutual TLS.

    dwcp certs init  --dir /etc/dwcp/ca [--cluster NAME] [--days N] [--force] [--json]
    dwcp certs issue --dir /etc/dwcp/ca --node NODE [--host H]... [--out DIR] [--owner USER[:GROUP]]
                     [--days N] [--force] [--json]

A human run prints one line per file written; ``--json`` prints one JSON
object on stdout.  Errors raise ConfigError, which ``dwcp.cli.main`` turns
into one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import os

from dwcp.errors import ConfigError

__all__ = ["add_parser", "run"]

_DEFAULT_HOSTS = ("127.0.0.1", "localhost")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certs", help="cluster CA and node certificates for mutual TLS")
    cs = p.add_subparsers(dest="certs_command", metavar="{init,issue}")

    i = cs.add_parser("init", help="create the cluster CA (ca.key 0600, ca.crt)")
    i.add_argument("--dir", required=True, help="the CA directory (created 0700 if missing)")
    i.add_argument("--cluster", default="dwcp", help="cluster name, in the CA's subject (default: dwcp)")
    i.add_argument("--days", type=int, default=3650, help="validity in days (default: 3650)")
    i.add_argument(
        "--force", action="store_true", help="replace an existing CA (orphans every node certificate)"
    )
    i.add_argument("--json", action="store_true", help="print one JSON object")

    s = cs.add_parser("issue", help="issue a node certificate signed by the cluster CA")
    s.add_argument("--dir", required=True, help="the CA directory (from `dwcp certs init`)")
    s.add_argument("--node", required=True, help="node id, the certificate's CN: 1-64 of [A-Za-z0-9._-]")
    s.add_argument(
        "--host",
        action="append",
        default=None,
        help="DNS name or IP address for the certificate's SAN (repeatable; default: 127.0.0.1 and localhost)",
    )
    s.add_argument("--out", default=None, help="where to write <node>.key and <node>.crt (default: --dir)")
    s.add_argument("--owner", metavar="USER[:GROUP]", default=None,
                   help="the service that reads them (e.g. dwcp, or root:dwcp): the key is USER:GROUP 0600 "
                        "(root:GROUP 0640), --out gets a copy of ca.crt and is USER:GROUP 0750")  # fmt: skip
    s.add_argument("--days", type=int, default=825, help="validity in days, at most the CA's (default: 825)")
    s.add_argument(
        "--force", action="store_true", help="replace an existing key and certificate for this node"
    )
    s.add_argument("--json", action="store_true", help="print one JSON object")

    b = cs.add_parser("bft-key", help="this node's Ed25519 key for BFT consensus (made 0600 if missing); "
                                      "prints the public key the other nodes list as its bft_key")  # fmt: skip
    b.add_argument(
        "--key-file", required=True, help="e.g. /var/lib/dwcp/consensus/bft.key (the default bft_key_file)"
    )
    b.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from dwcp.security.certs import bft_signing_key, init_ca, issue_node, parse_owner

    command = getattr(args, "certs_command", None)
    if command == "init":
        ca = init_ca(args.dir, cluster_name=args.cluster, days=args.days, force=args.force)
        written = [("CA key", ca.ca_key), ("CA certificate", ca.ca_cert)]
        out: dict[str, object] = {
            "command": "init",
            "cluster": args.cluster,
            "ca_key": ca.ca_key,
            "ca_cert": ca.ca_cert,
        }
    elif command == "issue":
        hosts = tuple(args.host) if args.host else _DEFAULT_HOSTS
        owner = parse_owner(args.owner) if args.owner else None
        node = issue_node(args.dir, args.node, hosts=hosts, days=args.days, force=args.force, out_dir=args.out,
                          owner=owner)  # fmt: skip
        written = [(f"{args.node} key", node.key), (f"{args.node} certificate", node.cert)]
        out = {
            "command": "issue",
            "node": args.node,
            "hosts": list(hosts),
            "key": node.key,
            "cert": node.cert,
            "ca_cert": node.ca_cert,
        }
    elif command == "bft-key":
        existed = os.path.exists(args.key_file)
        _, pub = bft_signing_key(args.key_file)
        written = [] if existed else [("BFT signing key", args.key_file)]
        out = {"command": "bft-key", "key_file": args.key_file, "public_key": pub, "created": not existed}
        if not args.json:
            for what, path in written:
                print(f"wrote {path} ({what})")
            print(
                f"bft_key = \"{pub}\"   # for this node's [[cluster.peers]] entry in the other nodes' configs"
            )
            return 0
    else:
        raise ConfigError("say `init` (create the cluster CA), `issue` (a node certificate) or `bft-key`")
    if args.json:
        print(json.dumps(out))
    else:
        for what, path in written:
            print(f"wrote {path} ({what})")
    return 0
