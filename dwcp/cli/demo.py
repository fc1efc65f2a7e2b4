"""`dwcp demo`: the whole story on an embedded default, with no set-up.

Two daemons start on loopback (temporary data directories, a throw-away
cluster CA and node certificates, mutual TLS).  Daemon A sends a generated
VM-like image (60% zero, 30% text-like, 10% random pages) to daemon B, then
a second version with 5% of its pages changed, which travels as a delta
against the first.  For each send: mode, raw bytes, wire bytes, ratio,
throughput, streams, and whether B verified the digest.  Everything is
removed afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from dwcp._testbase.images import dirty_version, vm_image

__all__ = ["run_demo", "human_bytes", "start_daemon", "same_dwcp_env"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _toml(node: str, data_dir: str, certs: dict | None) -> str:
    sec = "plaintext = true" if certs is None else (
        f'ca_cert = "{certs["ca"]}"\ncert = "{certs["cert"]}"\nkey = "{certs["key"]}"'
    )  # fmt: skip
    return (f'[node]\nid = "{node}"\n\n[listen]\nhost = "127.0.0.1"\ndata_port = 0\nmetrics_port = 0\n\n'
            f'[security]\n{sec}\n\n[storage]\ndata_dir = "{data_dir}"\n')  # fmt: skip


def same_dwcp_env(env: dict | None = None) -> dict:
    """An environment whose `python -m dwcp` imports this very dwcp (installed or in-place)."""
    import dwcp

    e = dict(os.environ if env is None else env)
    here = os.path.dirname(os.path.dirname(os.path.abspath(dwcp.__file__)))
    e["PYTHONPATH"] = here + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def start_daemon(root: str, node: str, certs: dict | None, env: dict | None = None, extra: str = ""):
    """Start `dwcp daemon` for ``node`` under ``root``; returns (process, config path, control socket, port).

    ``extra``: more TOML appended to the config (a [cluster] section, say).
    """
    from dwcp.daemon.control import request

    data_dir = os.path.join(root, node)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    cfg = os.path.join(root, f"{node}.toml")
    with open(cfg, "w") as f:
        f.write(_toml(node, data_dir, certs) + extra)
    log = open(os.path.join(root, f"{node}.log"), "wb")
    # cwd=root: `python -m` puts the cwd first on sys.path, where a source
    # checkout (without compiled extensions) would shadow the installed dwcp
    proc = subprocess.Popen([sys.executable, "-m", "dwcp", "daemon", "--config", cfg], stdout=log,
                            stderr=subprocess.STDOUT, env=same_dwcp_env(env), cwd=root)  # fmt: skip
    log.close()
    sock = os.path.join(data_dir, "control.sock")
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            with open(os.path.join(root, f"{node}.log")) as f:
                raise RuntimeError(f"daemon {node} exited with {proc.returncode}: {f.read()[-2000:]}")
        try:
            st = request(sock, {"op": "status"}, timeout_s=5)
            port = int(st["data_port"].rsplit(":", 1)[1])
            return proc, cfg, sock, port
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"daemon {node} did not come up within 30 s") from None
            time.sleep(0.1)


def _stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(args) -> int:
    from dwcp.daemon.control import request

    size = args.size - args.size % 4096
    if size <= 0:
        raise ValueError("--size must be at least 4096 bytes")
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    root = tempfile.mkdtemp(prefix="dwcp-demo-")
    procs = []
    try:
        certs_a = certs_b = None
        if not args.plaintext:
            from dwcp.security.certs import init_ca, issue_node

            ca_dir = os.path.join(root, "ca")
            init_ca(ca_dir, cluster_name="dwcp-demo")
            na = issue_node(ca_dir, "node-a", hosts=("127.0.0.1", "localhost"))
            nb = issue_node(ca_dir, "node-b", hosts=("127.0.0.1", "localhost"))
            certs_a = {"ca": na.ca_cert, "cert": na.cert, "key": na.key}
            certs_b = {"ca": nb.ca_cert, "cert": nb.cert, "key": nb.key}
        say(
            f"dwcp demo: two daemons on loopback ({'plaintext' if args.plaintext else 'mutual TLS 1.3'}) in {root}"
        )
        pa, _, sock_a, _ = start_daemon(root, "node-a", certs_a)
        procs.append(pa)
        pb, _, sock_b, port_b = start_daemon(root, "node-b", certs_b)
        procs.append(pb)
        say(f"dwcp demo: generating a {human_bytes(size)} VM-like image (60% zero, 30% text, 10% random pages) "
            f"and a version with {args.dirty:.0%} of its pages dirtied")  # fmt: skip
        v1 = vm_image(size, seed=args.seed)
        paths = [os.path.join(root, "vm-v1.img"), os.path.join(root, "vm-v2.img")]
        v1.tofile(paths[0])
        dirty_version(v1, fraction=args.dirty, seed=args.seed + 1).tofile(paths[1])
        del v1
        rows = []
        for path in paths:
            say(f"dwcp demo: node-a sends {os.path.basename(path)} to node-b as key demo/vm ...")
            r = request(sock_a, {"op": "send", "path": path, "to": f"127.0.0.1:{port_b}", "key": "demo/vm",
                                 "streams": args.streams})  # fmt: skip
            if not r.get("ok"):
                raise RuntimeError(f"send failed: {r.get('error')}")
            rows.append(r)
        st = request(sock_b, {"op": "status"})
        result = {"image_bytes": size, "dirty_fraction": args.dirty, "sends": rows, "receiver": st}
        if args.json:
            print(json.dumps(result))
        else:
            print(f"\n{'ver':>3} {'mode':<6} {'raw':>10} {'wire':>11} {'ratio':>9} {'throughput':>13} "
                  f"{'streams':>7}  verified")  # fmt: skip
            for i, r in enumerate(rows):
                print(f"{i + 1:>3} {r['mode']:<6} {human_bytes(r['size']):>10} {human_bytes(r['wire_bytes']):>11} "
                      f"{r['ratio']:>8.1f}x {human_bytes(r['throughput_bytes_per_s']) + '/s':>13} "
                      f"{r['streams']['max']:>7}  {r['verified']} ({r['digest'][:16]}…)")  # fmt: skip
        return 0 if all(r["verified"] for r in rows) else 1
    finally:
        for p in procs:
            _stop(p)
        if args.keep:
            print(f"dwcp demo: kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
