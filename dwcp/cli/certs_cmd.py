"""`dwcp certs init|issue`."""

from __future__ import annotations

import json

from dwcp.errors import ConfigError

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("certs", help="cluster CA and node certificates for mutual TLS")
    cs = p.add_subparsers(dest="certs_command", metavar="SUBCOMMAND")
    i = cs.add_parser("init", help="create the cluster CA")
    i.add_argument("--dir", required=True, help="directory for ca.key (0600) and ca.crt")
    i.add_argument("--cluster", default="dwcp")
    i.add_argument("--days", type=int, default=3650)
    i.add_argument("--force", action="store_true")
    i.add_argument("--json", action="store_true")
    s = cs.add_parser("issue", help="issue a node certificate signed by the cluster CA")
    s.add_argument("--dir", required=True, help="the CA directory")
    s.add_argument("--node", required=True, help="node id (the certificate's CN)")
    s.add_argument("--host", action="append", default=None, help="DNS name or IP for the SAN (repeatable)")
    s.add_argument("--out", default=None, help="where to write <node>.key and <node>.crt (default: --dir)")
    s.add_argument("--days", type=int, default=825)
    s.add_argument("--force", action="store_true")
    s.add_argument("--json", action="store_true")


def run(args) -> int:
    from dwcp.security.certs import init_ca, issue_node

    if args.certs_command == "init":
        r = init_ca(args.dir, cluster_name=args.cluster, days=args.days, force=args.force)
        out = {"ca_key": r.ca_key, "ca_cert": r.ca_cert}
    elif args.certs_command == "issue":
        hosts = tuple(args.host) if args.host else ("127.0.0.1", "localhost")
        r2 = issue_node(args.dir, args.node, hosts=hosts, days=args.days, force=args.force, out_dir=args.out)
        out = {"key": r2.key, "cert": r2.cert, "ca_cert": r2.ca_cert}
    else:
        raise ConfigError("dwcp certs: say init or issue")
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"wrote {k}: {v}")
    return 0
