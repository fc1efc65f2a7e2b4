"""`dwcp` subcommands.  Every error is one clear line on stderr and a non-zero
exit code, never a traceback (set DWCP_TRACEBACK=1 to see one).  Every
``--json`` output is one JSON object on stdout."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from dwcp._version import __version__
from dwcp.errors import ConfigError, DWCPError, TransferError, bind_error

__all__ = ["main"]

from dwcp.errors import (  # noqa: E402 - the exit codes, shared with the daemon's control API
    EXIT_AUTH,
    EXIT_CONFIG,
    EXIT_CONFLICT,
    EXIT_ERROR,
    EXIT_INTEGRITY,
    EXIT_NETWORK,
    EXIT_STORAGE,
    EXIT_USAGE,
    exit_code,
)

EXIT_CODES_HELP = """exit codes:
  0  success
  1  another error
  2  usage: the command line, an invalid key
  3  config: the config file, a setting, or a file it names (keys, certificates, dictionaries)
  4  network: a peer unreachable, a connection lost, no healthy peer, a peer busy or draining
  5  authentication: a TLS certificate or CA did not verify; an ACL refused
  6  integrity: a checksum or digest failed
  7  storage: a disk full or failing, a local file missing or unreadable
  8  replication: fewer verified copies than cluster.ack, or a conflicting write won
  130 interrupted; 141 stdout closed (a pipe), quietly
With --json an error is one JSON object on stdout: {"ok": false, "error", "kind", "exit"}."""


_KINDS = {EXIT_ERROR: "error", EXIT_USAGE: "usage", EXIT_CONFIG: "config", EXIT_NETWORK: "network",
          EXIT_AUTH: "authentication", EXIT_INTEGRITY: "integrity", EXIT_STORAGE: "storage",
          EXIT_CONFLICT: "replication"}  # fmt: skip


def _size(text: str) -> int:
    """A byte size on the command line: what a config file takes (dwcp.config.parse_size)."""
    from dwcp.config import parse_size

    try:
        return int(parse_size(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    """A rate: bytes/s with the size units, or bits/s (``500Mbit``), as iperf3 takes them."""
    from dwcp.config import parse_size

    try:
        return parse_size(text, rate=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _streams(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--streams takes a number or 'auto', not {text!r}") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError("--streams must be in [1, 256]")
    return n


def _add_security(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="dwcp.toml: TLS identity and transport settings come from it")
    p.add_argument("--ca", help="cluster CA certificate (mutual TLS)")
    p.add_argument("--cert", help="this node's certificate")
    p.add_argument("--key-file", help="this node's private key")
    p.add_argument(
        "--plaintext", action="store_true", help="no TLS (only where the peer runs plaintext on purpose)"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dwcp", description="WAN data-plane daemon: verified delta transfer",
                                epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--version", action="version", version=f"dwcp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "demo", help="the main job on an embedded default: two local daemons, a full and a delta send"
    )
    d.add_argument("--size", type=_size, default=1 << 30, help="image size (default 1G)")
    d.add_argument("--dirty", type=float, default=0.05, help="fraction of pages changed in v2 (default 0.05)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--streams", type=_streams, default=None, help="N or auto (default auto)")
    d.add_argument("--plaintext", action="store_true", help="run the demo daemons without TLS")
    d.add_argument("--keep", action="store_true", help="keep the temporary directory")
    d.add_argument("--json", action="store_true", help="one JSON object on stdout")

    dm = sub.add_parser("daemon", help="run the daemon (what systemd runs)")
    dm.add_argument("--config", required=True)

    s = sub.add_parser("send", help="send a file as KEY to a daemon")
    s.add_argument("path")
    s.add_argument(
        "--via",
        help="with a cluster target: relay through this peer id or region:NAME (default: "
        "through a region only when the measured region graph says it is faster)",
    )
    s.add_argument(
        "--to",
        required=True,
        help="HOST:PORT of the receiving daemon, or with --config's [cluster]: "
        "a peer id, region:NAME (the key's replicas there, failing over), or cluster",
    )
    s.add_argument("--key", required=True)
    s.add_argument("--streams", type=_streams, default=None, help="N or auto (default auto)")
    s.add_argument("--rate", type=_rate, default=None,
                   help="cap the total rate: bytes/s (60MB, 60MiB, 60M = MiB) or bits/s (500Mbit)")  # fmt: skip
    s.add_argument(
        "--chunk-size",
        type=_size,
        default=None,
        help="fixed chunk size, a multiple of 4K in [4K, 64M] (default: adapted to what the last send to "
        "this peer measured, else the config's transport.chunk_size_bytes)",
    )
    s.add_argument("--state-dir", help="where sent versions are kept as the next baselines "
                                       "(default: <data_dir>/sent with --config, else ~/.local/state/dwcp)")  # fmt: skip
    s.add_argument("--base", metavar="OLD",
                   help="a previous version of PATH that you keep yourself (a snapshot): the send is a delta "
                        "against it if the receiver holds it, and dwcp keeps no copy of PATH")  # fmt: skip
    s.add_argument("--direct", action="store_true",
                   help="with a cluster target: send from this process even when the local daemon runs "
                        "(default: through it, so its breakers, affinity and metrics see the send)")  # fmt: skip
    s.add_argument("--json", action="store_true")
    _add_security(s)

    f = sub.add_parser("fetch", help="pull the latest verified version of KEY (or --version DIGEST)")
    f.add_argument("key")
    f.add_argument("--from", dest="source", help="HOST:PORT; without it, the local daemon's catalog says "
                                                 "who holds the version, and one is picked by [cluster] policy")  # fmt: skip
    f.add_argument(
        "--version", metavar="DIGEST", help="an older version, by its object digest (dwcp status KEY)"
    )
    f.add_argument("--socket", help="the local daemon's control socket (default: from --config)")
    f.add_argument("-o", "--output", required=True)
    f.add_argument("--json", action="store_true")
    _add_security(f)

    st = sub.add_parser("status", help="ask the local daemon how it is (or, with KEY, that key's history)")
    st.add_argument("key", nargs="?", help="a key: its versions, holders and conflicts, from the catalog")
    st.add_argument("--config", help="the daemon's config (for its control socket)")
    st.add_argument("--socket", help="the control socket path")
    st.add_argument("--json", action="store_true")

    rp = sub.add_parser("repair", help="run one anti-entropy pass on the local daemon now (all keys, or KEY)")
    rp.add_argument("key", nargs="?", help="only this key")
    rp.add_argument("--config", help="the daemon's config (for its control socket)")
    rp.add_argument("--socket", help="the control socket path")
    rp.add_argument("--json", action="store_true")

    sb = sub.add_parser("scrub", help="re-hash every version the local daemon stores (--now: one pass, now)")
    sb.add_argument("--now", action="store_true", required=True, help="run one pass now and report it")
    sb.add_argument("--rate", type=_rate, default=None, metavar="RATE",
                    help="read at most RATE (bytes/s, e.g. 200M; default: as fast as the disk goes)")  # fmt: skip
    sb.add_argument("--config", help="the daemon's config (for its control socket)")
    sb.add_argument("--socket", help="the control socket path")
    sb.add_argument("--json", action="store_true")

    ls_ = sub.add_parser("ls", help="keys this node stores: versions, sizes, holders")
    ls_.add_argument("prefix", nargs="?", default="", help="only keys starting with it")
    rm_ = sub.add_parser("rm", help="remove KEY's versions (or --version DIGEST) from this node's store")
    rm_.add_argument("key")
    rm_.add_argument("--version", metavar="DIGEST", help="only this version")
    gc_ = sub.add_parser(
        "gc", help="remove stale partials, old baselines, quarantined and conflicting copies"
    )
    gc_.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    du_ = sub.add_parser("du", help="disk usage of this node's stores")
    for x in (ls_, rm_):
        x.add_argument(
            "--sent", action="store_true", help="the sender's baselines (<data_dir>/sent), not the store"
        )
    for x in (ls_, rm_, gc_, du_):
        x.add_argument("--config", help="the node's config (its daemon's control socket, else its data_dir)")
        x.add_argument("--socket", help="the control socket path")
        x.add_argument("--json", action="store_true")

    rl = sub.add_parser("reload", help="make the local daemon re-read its config file (like SIGHUP)")
    rl.add_argument("--config", help="the daemon's config (for its control socket)")
    rl.add_argument("--socket", help="the control socket path")
    rl.add_argument("--json", action="store_true")

    sub.add_parser(
        "paths", help="where the installed package put its unit, example config and monitoring rules"
    )
    sub.add_parser(
        "man", help="print the dwcp(1) man page (roff): dwcp man | gzip > /usr/local/share/man/man1/dwcp.1.gz"
    )
    comp = sub.add_parser("completion", help="print a shell completion script: dwcp completion bash > "
                                             "/etc/bash_completion.d/dwcp")  # fmt: skip
    comp.add_argument("shell", choices=["bash"])

    cl = sub.add_parser("cluster", help="the cluster's membership, changed through consensus")
    cls = cl.add_subparsers(dest="cluster_command")
    ca = cls.add_parser("add", help="add NODE (its data port at ADDR) to the cluster")
    ca.add_argument("node")
    ca.add_argument("address", metavar="ADDR", help="HOST:PORT of the new node's data port")
    ca.add_argument("--region", default="", help="its region (default: as its [[cluster.peers]] entry says)")
    cr = cls.add_parser("remove", help="remove NODE from the cluster (its keys are re-replicated)")
    cr.add_argument("node")
    cm = cls.add_parser("members", help="the members and the Raft voters")
    for x in (ca, cr, cm):
        x.add_argument("--config", help="the local daemon's config (for its control socket)")
        x.add_argument("--socket", help="the control socket path")
        x.add_argument("--json", action="store_true")

    cs = sub.add_parser("consensus", help="the replicated catalog's consensus (adaptive mode)")
    css = cs.add_subparsers(dest="consensus_command")
    sw = css.add_parser(
        "switch", help="switch the cluster's algorithm by a committed command (nothing applied is lost)"
    )
    sw.add_argument("algorithm", choices=["raft", "bft"])
    sw.add_argument("--config", help="the local daemon's config (for its control socket)")
    sw.add_argument("--socket", help="the control socket path")
    sw.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the switch to be applied here"
    )
    sw.add_argument("--json", action="store_true")

    from .tune_cmd import add_parser as add_tune

    add_tune(sub)

    cc = sub.add_parser("check-config", help="validate a config file: every problem, one per line")
    cc.add_argument("file")
    cc.add_argument("--json", action="store_true", help="print the effective config (defaults filled in)")

    from .certs_cmd import add_parser as add_certs

    add_certs(sub)

    from .dict_cmd import add_parser as add_dict

    add_dict(sub)

    from .doctor_cmd import add_parser as add_doctor

    add_doctor(sub)

    sub.add_parser("backend", help="print the data-plane backend in use and its features")
    return p


def _load_security(args):
    from dwcp.config import SecurityConfig, TransportConfig, load_toml

    if args.config:
        cfg = load_toml(args.config)
        return cfg.security, cfg.transport, cfg
    if args.plaintext:
        return SecurityConfig(plaintext=True), TransportConfig(), None
    if args.ca and args.cert and args.key_file:
        return SecurityConfig(ca_cert=args.ca, cert=args.cert, key=args.key_file), TransportConfig(), None
    raise ConfigError("no TLS identity: pass --config, or --ca/--cert/--key-file, or --plaintext on purpose")


def _print(result: dict, as_json: bool, human: str) -> None:
    if as_json:
        print(json.dumps(result))
    else:
        print(human)


class _ProgressBar:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, label: str) -> None:
        import time

        self.label = label
        self.t0 = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        import time

        frac = done / total if total else 1.0
        rate = done / max(time.monotonic() - self.t0, 1e-9)
        filled = int(30 * frac)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {frac:6.1%} {rate / 2**20:8.1f} MiB/s"
        )
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _cmd_send(args) -> int:
    from dwcp.cluster.node import ClusterSendReport, ClusterView, parse_target
    from dwcp.codec import DictionaryStore
    from dwcp.daemon.main import parse_hostport
    from dwcp.storage import ObjectStore
    from dwcp.transport.sender import Sender
    from dwcp.transport.session import TransferReport
    from dwcp.transport.source import FileSource

    security, transport, cfg = _load_security(args)
    if args.chunk_size is not None:
        transport = dataclasses.replace(transport, chunk_size_bytes=args.chunk_size, adaptive_chunks=False)
        bad = [p for p in transport.problems() if p.startswith("chunk_size_bytes")]
        if bad:
            raise ConfigError(f"--chunk-size: {bad[0]}")
    kind, _ = parse_target(args.to)
    cluster = None
    if kind == "addr":
        host, port = parse_hostport(args.to)
        if args.via:
            raise ConfigError("--via needs a cluster target (a peer id or region:NAME) and --config")
    elif cfg is None:
        raise ConfigError(f"--to {args.to}: a cluster target needs --config with a [cluster] section")
    else:
        if not (args.direct or args.base or args.chunk_size or args.state_dir):
            rc = _send_through_daemon(args, cfg)
            if rc is not None:
                return rc
        cluster = ClusterView(cfg.cluster, cfg.node)
    state_dir = args.state_dir or (
        os.path.join(cfg.storage.data_dir, "sent") if cfg is not None
        else os.path.join(os.path.expanduser("~/.local/state/dwcp"), "sent")
    )  # fmt: skip
    # read, not mapped: a mapped file truncated mid-send kills the process with SIGBUS.  Refuses a
    # FIFO, socket, directory or character device before opening it (a FIFO's open blocks)
    src = FileSource.open(args.path)
    bar = None
    base = None
    try:
        base = FileSource.open(args.base) if args.base is not None else None
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        sender = Sender(transport, security, node_id=cfg.node.id if cfg else "cli", baselines=ObjectStore(state_dir),
                        tune_dir=cfg.storage.data_dir if cfg else None, codec=cfg.codec if cfg else None,
                        dictionaries=DictionaryStore(cfg.dictionaries_dir) if cfg else None)  # fmt: skip
        bar = _ProgressBar(f"send {args.key}") if not args.json and sys.stderr.isatty() else None
        kw = {"streams": args.streams, "rate_limit_bytes_per_s": args.rate, "progress": bar, "base": base}
        r: ClusterSendReport | TransferReport
        if cluster is not None:
            r = cluster.send(sender, src, args.key, args.to, via=args.via, **kw)
        else:
            r = sender.send(src, host, port, args.key, **kw)
    finally:
        src.close()
        if base is not None:
            base.close()
        if bar is not None:
            bar.close()
    from .demo import human_bytes

    t: TransferReport = r if isinstance(r, TransferReport) else r.transfer
    where = args.to
    if isinstance(r, ClusterSendReport):
        where += f" ({r.peer}" + (f" via {r.via}" if r.via else "") \
            + (f", after {len(r.failover)} failed" if r.failover else "") + ")"  # fmt: skip
        if r.ack is not None:  # a replicated send: each home, and the policy it met
            where += _replicas_text(r.ack, r.replicas)
    _print(r.to_json(), args.json, f"sent {args.key} -> {where}: {t.mode}, {human_bytes(t.size)} raw, "
                                   f"{human_bytes(t.wire_bytes)} on the wire ({t.ratio:.1f}x), "
                                   f"{human_bytes(t.throughput_bytes_per_s)}/s, {t.streams.max} streams, "
                                   f"digest {t.digest} verified" + _path_text(t.path))  # fmt: skip
    return 0


def _path_text(path: dict | None) -> str:
    """What a send's path said, for the human summary: the forecast it started from, its anomalies."""
    if not path:
        return ""
    out = ""
    if path.get("used"):
        out += f"; started from the forecast of the path via {path['nic']}"
    for a in (path.get("anomalies") or [])[:3]:
        out += f"; path anomaly: {a.get('detail')}"
    return out


def _replicas_text(ack: dict, replicas) -> str:
    return (f", {ack['verified']} of {len(replicas)} replicas verified (ack = {ack['policy']}: "
            + ", ".join(f"{x['peer']} {x['state']}" for x in replicas) + ")")  # fmt: skip


def _send_through_daemon(args, cfg) -> int | None:
    """A cluster send through the local daemon (its control API, the file's descriptor passed over):
    the daemon's breakers, outlier ejection and affinity carry over between sends, and its metrics
    count the send.  None when no daemon answers on the config's control socket (then the CLI sends
    itself, and says so)."""
    from dwcp.daemon.control import request
    from dwcp.transport.source import FileSource

    from .demo import human_bytes

    src = FileSource.open(args.path)  # with this user's permissions; refuses FIFOs and the like
    try:
        req = {"op": "send", "path": os.path.abspath(args.path), "to": args.to, "key": args.key,
               "streams": args.streams, "rate": args.rate, "via": args.via}  # fmt: skip
        r = request(cfg.control_socket, req, timeout_s=None, fds=[src.fileno()])
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"dwcp send: no local daemon answers on {cfg.control_socket}: sending from this process "
              "(its breakers and affinity start afresh)", file=sys.stderr)  # fmt: skip
        return None
    finally:
        src.close()
    if not r.get("ok"):
        raise TransferError(f"{args.key} -> {args.to} (through the local daemon): {r.get('error')}")
    r["through_daemon"] = True
    where = (
        f"{args.to} ({r['peer']}"
        + (f", after {len(r['failover'])} failed" if r.get("failover") else "")
        + ")"
    )
    if r.get("ack"):
        where += _replicas_text(r["ack"], r["replicas"])
    _print(r, args.json, f"sent {args.key} -> {where} through the local daemon: {r['mode']}, "
                         f"{human_bytes(r['size'])} raw, {human_bytes(r['wire_bytes'])} on the wire, "
                         f"digest {r['digest']} verified")  # fmt: skip
    return 0


def _cmd_fetch(args) -> int:
    from dwcp.daemon.main import parse_hostport
    from dwcp.transport.fetch import fetch

    security, transport, cfg = _load_security(args)
    digest = None
    if args.version is not None:
        try:
            digest = bytes.fromhex(args.version)
        except ValueError:
            digest = b""
        if len(digest) != 16:
            raise ConfigError(
                f"--version {args.version!r}: an object digest, 32 hex digits (dwcp status --json)"
            )
    node_id = cfg.node.id if cfg else "cli"

    def one(host: str, port: int, digest: bytes | None) -> dict:
        return fetch(args.key, host, port, args.output, transport, security, node_id=node_id, digest=digest)

    from .demo import human_bytes

    if args.source is not None:
        r = one(*parse_hostport(args.source), digest)
        where = args.source
    else:
        r, where = _fetch_by_catalog(args, cfg, digest, one)
    _print(r, args.json, f"fetched {args.key} from {where} -> {args.output}: {human_bytes(r['size'])}, "
                         f"digest {r['digest']} verified")  # fmt: skip
    return 0


def _fetch_by_catalog(args, cfg, digest: bytes | None, one) -> tuple[dict, str]:
    """``dwcp fetch KEY`` without --from: the local daemon's catalog names the version's holders."""
    from dwcp.cluster.node import ClusterView

    if cfg is None and not args.socket:
        raise ConfigError("fetch without --from asks the local daemon's catalog: pass --config (or --socket)")
    loc = _ask_daemon(args, {"op": "locate", "key": args.key})
    if not loc.get("ok"):
        raise ConfigError(f"cannot locate {args.key}: {loc.get('error')}")
    versions = loc["versions"]
    if not versions:
        raise ConfigError(
            f"{args.key}: the catalog lists no version of it (a typo? `dwcp status --json` lists keys)"
        )
    want = digest.hex() if digest is not None else versions[-1]["digest"]
    v = next((v for v in versions if v["digest"] == want), None)
    if v is None:
        raise ConfigError(f"{args.key}: the catalog lists no version {want} (it lists "
                          + ", ".join(f"{x['version']}: {x['digest']}" for x in versions) + ")")  # fmt: skip
    if not v["holders"]:
        raise ConfigError(f"{args.key} version {v['version']} ({want}): no node holds it any more")
    if cfg is not None:
        view = ClusterView(cfg.cluster, cfg.node)
    else:
        from dwcp.config import ClusterConfig, NodeConfig

        view = ClusterView(ClusterConfig(), NodeConfig())
    # exactly the catalog's version: a holder that has moved on refuses it, and the next is tried
    pinned = bytes.fromhex(want)
    r = view.fetch(lambda host, port: one(host, port, pinned), args.key, v["holders"], loc["addresses"])
    r["version"] = v["version"]
    return r, f"{r['peer']} ({r['from']}, version {v['version']}" + (
        f", after {len(r['failover'])} failed" if r["failover"] else "") + ")"  # fmt: skip


def _ask_daemon(args, req: dict, timeout_s: float | None = 10) -> dict:
    from dwcp.config import load_toml
    from dwcp.daemon.control import request

    path = args.socket or (
        load_toml(args.config).control_socket if args.config else "/var/lib/dwcp/control.sock"
    )
    try:
        return request(path, req, timeout_s=timeout_s)
    except (FileNotFoundError, ConnectionRefusedError):
        from dwcp.errors import PeerUnreachableError

        raise PeerUnreachableError(
            f"no daemon answers on {path} -- is dwcpd running? (pass --config or --socket)"
        ) from None


def _cmd_status(args) -> int:
    if args.key is not None:
        return _key_history(args)
    r = _ask_daemon(args, {"op": "status"})
    _print(r, args.json, _status_text(r))
    return 0 if r.get("ok") else EXIT_ERROR


def _status_text(r: dict) -> str:
    """`dwcp status` for a person: a line per component, the peers as a table (--json has it all)."""
    from .demo import human_bytes

    up = int(r.get("uptime_s", 0))
    srv = r.get("server") or {}
    lines = [f"{r['node']} (region {r['region']}): dwcp {r['version']}, {r['backend']} backend, up "
             f"{up // 86400}d {up % 86400 // 3600}h {up % 3600 // 60}m" + (", draining" if r.get("draining") else ""),
             f"data port  {r['data_port']} ({'mutual TLS' if r.get('tls') else 'plaintext'})"
             + (f", metrics {r['metrics_endpoint']}" if r.get("metrics_endpoint") else ""),
             f"transfers  {len(r.get('transfers') or [])} in progress; received {srv.get('transfers_ok_total', 0)} ok, "
             f"{srv.get('transfers_failed_total', 0)} failed ({human_bytes(srv.get('bytes_raw_total', 0))}); sent "
             f"{r.get('sends_ok', 0)} ok, {r.get('sends_failed', 0)} failed",
             f"store      {r.get('keys', 0)} keys"]  # fmt: skip
    for t in r.get("transfers") or []:
        lines.append(f"  {t['key']} from {t['peer']}: {t['mode']}, {t['chunks_received']} chunks, "
                     f"{t['streams']} streams, {t['age_s']:.0f} s")  # fmt: skip
    eng = r.get("engine") or {}
    if eng:
        lines.append(f"engine     {eng.get('kind')}" + (f", {eng['loops']} loops" if eng.get("loops") else "")
                     + (f" ({eng.get('cpus_why')})" if eng.get("cpus_why") else ""))  # fmt: skip
    health = r.get("health") or {}
    if health:
        bad = [f"{n} {c['status']}: {c.get('message', '')}" for n, c in (health.get("checks") or {}).items()
               if c.get("status") != "healthy"]  # fmt: skip
        lines.append(f"health     {health.get('status')}" + ("".join(f"\n  {b}" for b in bad)))
    rf = r.get("raft")
    if rf:
        lines.append(f"consensus  raft {rf['role']}, leader {rf['leader']}, term {rf['term']}, commit {rf['commit']}, "
                     f"voters {', '.join(rf['voters'])}")  # fmt: skip
    elif r.get("consensus"):
        lines.append(f"consensus  {r['consensus'].get('backend')}")
    peers = ((r.get("cluster") or {}).get("peers")) or {}
    others = {p: v for p, v in peers.items() if p != r["node"]}
    if others:
        w = max(4, *(len(p) for p in others))
        lines.append("cluster    " + f"{'PEER':<{w}}  {'ADDRESS':<22} {'REGION':<12} {'HEALTHY':<8} BREAKER")
        for p, v in sorted(others.items()):
            lines.append("           " + f"{p:<{w}}  {v['address']:<22} {v['region']:<12} "
                         f"{'yes' if v['healthy'] else 'no':<8} {v['breaker']['state']}")  # fmt: skip
    rp = r.get("repair")
    if rp:
        lines.append(f"repair     {rp['passes']} passes: {rp['repaired_total']} repaired, {rp['failed_total']} failed, "
                     f"{rp['behind_s']:.0f} s behind")  # fmt: skip
    sc = r.get("scrub")
    if sc:
        lines.append(f"scrub      {sc['passes']} passes: {sc['ok_total']} versions ok, {sc['corrupt_total']} corrupt, "
                     f"{human_bytes(sc['bytes_total'])} read")  # fmt: skip
    return "\n".join(lines)


def _cmd_repair(args) -> int:
    req: dict = {"op": "repair"}
    if args.key is not None:
        req["key"] = args.key
    r = _ask_daemon(args, req, timeout_s=3600)
    if not r.get("ok"):
        print(f"dwcp repair: {r.get('error')}", file=sys.stderr)
        return int(r.get("exit", EXIT_ERROR))
    lines = [f"repaired {x['key']} version {x['version']} from {x['from']} ({x['mode']}, {x['wire_bytes']} wire bytes)"
             for x in r["repaired"]] + [f"failed {x['key']} version {x['version']}: {x['error']}" for x in r["failed"]]  # fmt: skip
    _print(
        r, args.json, "\n".join(lines) or "nothing to repair: this node holds every version it is a home of"
    )
    return 0 if not r["failed"] else EXIT_ERROR


def _cmd_scrub(args) -> int:
    from .demo import human_bytes

    req: dict = {"op": "scrub"}
    if args.rate is not None:
        req["rate"] = args.rate
    r = _ask_daemon(args, req, timeout_s=None)
    if not r.get("ok"):
        print(f"dwcp scrub: {r.get('error')}", file=sys.stderr)
        return int(r.get("exit", EXIT_ERROR))
    lines = [f"checked {r['checked']} versions ({human_bytes(r['bytes'])}) in {r['seconds']:.1f} s: "
             f"{len(r['corrupt'])} corrupt"]  # fmt: skip
    lines += [
        f"corrupt: {x['key']} version {x['digest']}: quarantined, repairing from a replica"
        for x in r["corrupt"]
    ]
    _print(r, args.json, "\n".join(lines))
    return 0 if not r["corrupt"] else EXIT_ERROR


def _key_history(args) -> int:
    """`dwcp status KEY`: the key's versions (oldest first, the latest last) and its conflicts."""
    import datetime

    r = _ask_daemon(args, {"op": "history", "key": args.key})
    if not r.get("ok"):
        print(f"dwcp status: {r.get('error')}", file=sys.stderr)
        return int(r.get("exit", EXIT_ERROR))

    def when(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")

    nv, nc = len(r["versions"]), len(r["conflicts"])
    lines = [f"{args.key}: {nv} version{'s' * (nv != 1)}, {nc} conflict{'s' * (nc != 1)}"]
    for i, v in enumerate(r["versions"]):
        last = " (latest)" if i == len(r["versions"]) - 1 else ""
        lines.append(f"  version {v['version']}{last}: {v['digest']}, {v['size']} bytes, {when(v['at'])}, "
                     f"by {v.get('writer') or '?'}, held by {', '.join(v['holders']) or 'nobody'}")  # fmt: skip
    for c in r["conflicts"]:
        lines.append(f"  conflict ({c['policy']}: {c['outcome']}): version {c['version']} {c['digest']} by "
                     f"{c['writer'] or '?'} replaced {c['parent'] or 'nothing'} while {c['latest'] or 'none'} by "
                     f"{c['latest_writer'] or '?'} was the latest"
                     + (f"; kept aside by {', '.join(c['holders'])}" if c.get("holders") else ""))  # fmt: skip
    _print(r, args.json, "\n".join(lines))
    return 0


def _store(args, req: dict) -> dict:
    """A store request: through the daemon when it runs, else on the config's data directory."""
    from dwcp.errors import PeerUnreachableError

    try:
        return _ask_daemon(args, req, timeout_s=600)
    except PeerUnreachableError:
        if not args.config:
            raise
    from dwcp.config import load_toml
    from dwcp.daemon.storeops import handle
    from dwcp.storage import ObjectStore

    cfg = load_toml(args.config)
    d = cfg.storage.data_dir
    if not os.path.isdir(d):
        raise ConfigError(
            f"storage.data_dir {d} does not exist (nothing stored yet, or another node's config?)"
        )
    store = ObjectStore(d, keep_versions=cfg.storage.keep_versions)
    sent = ObjectStore(os.path.join(d, "sent"), keep_versions=2)
    return handle(req, store=store, sent=sent, max_age_s=cfg.storage.partial_max_age_s)


def _cmd_store(args) -> int:
    """`dwcp ls | rm | gc | du`: a table (or --json)."""
    import datetime

    from .demo import human_bytes

    cmd = args.command
    req: dict = {"op": cmd}
    if cmd == "ls":
        req.update(prefix=args.prefix, sent=args.sent)
    elif cmd == "rm":
        req.update(key=args.key, version=args.version, sent=args.sent)
    elif cmd == "gc":
        req.update(dry_run=args.dry_run)
    r = _store(args, req)
    if not r.get("ok"):
        print(f"dwcp {cmd}: error: {r.get('error')}", file=sys.stderr)
        return int(r.get("exit", EXIT_ERROR))
    if cmd == "ls":
        lines = [f"{'KEY':<32} {'VERSION':<34} {'SIZE':>10}  {'STORED (UTC)':<19}  HOLDERS"]
        for k in r["keys"]:
            for i, v in enumerate(k["versions"]):
                when = datetime.datetime.fromtimestamp(v["stored_at"], datetime.UTC).strftime(
                    "%Y-%m-%d %H:%M:%S"
                )
                lines.append(f"{k['key'] if i == 0 else '':<32} {v['digest'] + (' *' if v['latest'] else ''):<34} "
                             f"{human_bytes(v['size']):>10}  {when}  "
                             + (", ".join(k["holders"]) if i == 0 and k.get("holders") else ""))  # fmt: skip
        text = "\n".join(lines) + f"\n{len(r['keys'])} keys (* latest)"
    elif cmd == "rm":
        text = f"removed {len(r['removed'])} version(s) of {r['key']}: {', '.join(r['removed'])}"
    elif cmd == "gc":
        verb = "would remove" if r["dry_run"] else "removed"
        text = "\n".join(f"{verb} {len(v)} {area} (older than {r['max_age_s']:.0f} s)" + "".join(f"\n  {p}" for p in v)
                         for area, v in r["removed"].items())  # fmt: skip
    else:
        text = "\n".join(f"{a:<11} {human_bytes(r[a]['bytes']):>10} in {r[a]['files']} files "
                         f"({human_bytes(r[a]['allocated_bytes'])} on disk)" for a in ("objects", "partial", "sent",
                         "quarantine", "conflicts")) + f"\n{'total':<11} {human_bytes(r['total_bytes']):>10}"  # fmt: skip
    _print(r, args.json, text)
    return 0


def _cmd_reload(args) -> int:
    r = _ask_daemon(args, {"op": "reload"}, timeout_s=30)
    if r.get("ok"):
        lines = [f"applied: {x}" for x in r["applied"]] + [
            f"needs a restart: {x}" for x in r["needs_restart"]
        ]
        _print(r, args.json, "\n".join(lines) or "reloaded: nothing changed")
        return 0
    if args.json:
        _print(r, True, "")
    else:
        print(f"dwcp reload: {r.get('error')}", file=sys.stderr)
        for p in r.get("problems", []):
            print(f"  {p}", file=sys.stderr)
    return EXIT_ERROR


def _cmd_paths() -> int:
    """The data files a `pip install` put under <prefix>/share/dwcp (pyproject's data-files)."""
    import sysconfig

    share = os.path.join(sysconfig.get_path("data"), "share", "dwcp")
    names = ["dwcpd.service", "dwcp.toml.example", "install-systemd.sh", "monitoring"]
    found = {n: os.path.join(share, n) for n in names if os.path.exists(os.path.join(share, n))}
    if not found:
        print(
            f"dwcp paths: nothing under {share} (a source checkout: see systemd/ and monitoring/)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    for n, p in found.items():
        print(f"{n:<20} {p}")
    return 0


def _cmd_cluster(args) -> int:
    cmd = getattr(args, "cluster_command", None)
    if cmd is None:
        raise ConfigError(
            "say `dwcp cluster add NODE ADDR`, `dwcp cluster remove NODE` or `dwcp cluster members`"
        )
    if cmd == "members":
        st = _ask_daemon(args, {"op": "status"})
        peers = (st.get("cluster") or {}).get("peers") or {}
        voters = set((st.get("raft") or {}).get("voters") or [])
        r = {"ok": True, "node": st["node"], "members": {st["node"]: {"address": st["data_port"], "voter": st["node"]
             in voters}} | {p: {"address": v["address"], "region": v["region"], "healthy": v["healthy"],
                                "voter": p in voters} for p, v in peers.items() if p != st["node"]}}  # fmt: skip
        lines = [f"{p}: {m['address']}" + (" (this node)" if p == st["node"] else f", {m['region']}, "
                 + ("healthy" if m["healthy"] else "unhealthy")) + (", voter" if m["voter"] else "")
                 for p, m in sorted(r["members"].items())]  # fmt: skip
        _print(r, args.json, "\n".join(lines))
        return 0
    req = {"op": "member", "action": cmd, "id": args.node}
    if cmd == "add":
        req.update(address=args.address, region=args.region)
    r = _ask_daemon(args, req, timeout_s=30)
    if not r.get("ok"):
        print(f"dwcp cluster {cmd}: {r.get('error')}", file=sys.stderr)
        return EXIT_ERROR
    _print(r, args.json, f"{'added' if cmd == 'add' else 'removed'} {args.node}: members "
                         f"{', '.join(r['members'])}; voters now {', '.join(r['voters'])} (the leader changes them "
                         "one node at a time)")  # fmt: skip
    return 0


def _cmd_consensus(args) -> int:
    if getattr(args, "consensus_command", None) != "switch":
        raise ConfigError("say `dwcp consensus switch raft|bft`")
    r = _ask_daemon(args, {"op": "consensus_switch", "algorithm": args.algorithm, "timeout_s": args.timeout},
                    timeout_s=args.timeout + 5)  # fmt: skip
    if r.get("ok"):
        c = r["consensus"]
        _print(r, args.json, f"switched: epoch {c['epoch']} runs {c['algorithm']}")
        return 0
    if args.json:
        _print(r, True, "")
    else:
        why = r.get("error") or (r.get("result") or {}).get("error") or f"already running {args.algorithm}"
        print(f"dwcp consensus switch: {why}", file=sys.stderr)
    return EXIT_ERROR


def _cmd_check_config(args) -> int:
    from dwcp.config import load_toml

    try:
        cfg = load_toml(args.file)
        _check_files(cfg)
    except ConfigError as exc:
        for p in exc.problems or [str(exc)]:
            print(p, file=sys.stderr)
        print(f"dwcp check-config: {len(exc.problems) or 1} problem(s) in {args.file}", file=sys.stderr)
        return EXIT_ERROR
    _print(dataclasses.asdict(cfg), args.json, f"{args.file}: ok")
    return 0


def _check_files(cfg) -> None:
    """What the daemon opens at start, opened as this user (under systemd, ``ExecStartPre`` runs as the
    service's user): the TLS identity (files exist, the key's owner and mode pass, the pair loads); and
    what this host must offer: the congestion control, the data port.  Raises ConfigError listing
    every problem; prints warnings (exit status 0) to stderr."""
    problems: list[str] = []
    if not cfg.security.plaintext:
        from dwcp.security.tls import TLSConfig, server_context

        s = cfg.security
        try:
            server_context(TLSConfig(ca_cert=s.ca_cert, cert=s.cert, key=s.key))
        except ConfigError as exc:
            problems += exc.problems
    problems += _readable_files(cfg)
    try:
        with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
            have = f.read().split()
    except OSError:
        have = []
    cc = cfg.transport.congestion
    if have and cc and cc not in have:
        msg = (f"transport.congestion {cc!r} is not available in this kernel (available: {' '.join(have)}); "
               f"modprobe tcp_{cc}, or pick one of those")  # fmt: skip
        if cc == "bbr":  # the default: the transport falls back to the kernel's, and says so
            print(f"warning: {msg}", file=sys.stderr)
        else:
            problems.append(msg)
    problems += _port_problems(cfg)
    if problems:
        raise ConfigError(problems=problems)


def _readable_files(cfg) -> list[str]:
    """The other files a config names, as this user: the BFT signing key (owner and mode, as a TLS key),
    etcd's CA and client identity, the dictionaries directory."""
    from dwcp.security.certs import check_key_permissions

    out: list[str] = []
    cc = cfg.consensus
    if (
        cc.enabled
        and (cc.algorithm == "bft" or cc.adaptive)
        and cc.bft_key_file
        and os.path.exists(cc.bft_key_file)
    ):
        try:
            check_key_permissions(cc.bft_key_file)
        except ConfigError as exc:
            out += [f"consensus.bft_key_file: {p}" for p in exc.problems]
    if cc.enabled and cc.backend == "etcd":
        for name in ("etcd_ca", "etcd_cert", "etcd_key"):
            path = getattr(cc, name)
            if path and not os.access(path, os.R_OK):
                out.append(f"consensus.{name}: {path} is missing or not readable by this user")
    d = cfg.codec.dictionaries_dir
    if d and os.path.exists(d) and not os.access(d, os.R_OK | os.X_OK):
        out.append(f"codec.dictionaries_dir: {d} is not readable by this user")
    return out


def _port_problems(cfg) -> list[str]:
    """Whether this process could bind the data port (a running dwcpd holding it is fine)."""
    import errno
    import socket

    lc = cfg.listen
    if not lc.data_port:
        return []
    fam = socket.AF_INET6 if ":" in lc.host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((lc.host, lc.data_port))
            return []
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                from dwcp.daemon.control import request

                try:
                    request(cfg.control_socket, {"op": "status"}, timeout_s=2)
                    return []  # the daemon of this config holds it (a reload's check)
                except OSError:
                    pass
            return [str(bind_error("listen.data_port", lc.host, lc.data_port, exc))]


def main(argv: list[str] | None = None) -> int:
    """The `dwcp` command: its exit code (EXIT_*); a reader that closed stdout is not an error to report."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe prints a traceback
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args)
        if args.command == "daemon":
            from dwcp.config import load_toml
            from dwcp.daemon.main import run

            return run(load_toml(args.config), config_path=args.config)
        if args.command == "send":
            return _cmd_send(args)
        if args.command == "fetch":
            return _cmd_fetch(args)
        if args.command == "status":
            return _cmd_status(args)
        if args.command == "reload":
            return _cmd_reload(args)
        if args.command == "repair":
            return _cmd_repair(args)
        if args.command in ("ls", "rm", "gc", "du"):
            return _cmd_store(args)
        if args.command == "scrub":
            return _cmd_scrub(args)
        if args.command == "consensus":
            return _cmd_consensus(args)
        if args.command == "cluster":
            return _cmd_cluster(args)
        if args.command == "paths":
            return _cmd_paths()
        if args.command in ("man", "completion"):
            from .manpage import bash_completion, man_page

            print(
                man_page(parser, EXIT_CODES_HELP) if args.command == "man" else bash_completion(parser),
                end="",
            )
            return 0
        if args.command == "check-config":
            return _cmd_check_config(args)
        if args.command == "tune":
            from .tune_cmd import run as run_tune

            return run_tune(args)
        if args.command == "certs":
            from .certs_cmd import run as run_certs

            return run_certs(args)
        if args.command == "dict":
            from .dict_cmd import run as run_dict

            return run_dict(args)
        if args.command == "doctor":
            from .doctor_cmd import run as run_doctor

            return run_doctor(args)
        if args.command == "backend":
            import dwcp

            print(json.dumps({"backend": dwcp.backend, "features": dwcp.backend_features}))
            return 0
    except KeyboardInterrupt:
        print("dwcp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dwcp ... | head`: the reader is gone; nothing to say, nobody to say it to
        raise
    except (DWCPError, OSError, ImportError, ValueError) as exc:
        if os.environ.get("DWCP_TRACEBACK"):
            raise
        code = exit_code(exc)
        print(f"dwcp {args.command}: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            try:
                print(json.dumps({"ok": False, "error": str(exc), "kind": _KINDS[code], "exit": code}))
            except BrokenPipeError:
                pass
        return code
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE
