"""`dwcp doctor`: each probe against fake /proc and /sys trees and substituted syscalls, the JSON
schema pinned, and one real run on this machine through ``dwcp.cli.main.main``."""

from __future__ import annotations

import errno
import json
import os
import socket
import sys

import pytest

from dwcp import doctor
from dwcp.cli.doctor_cmd import render_table
from dwcp.cli.main import main
from dwcp.doctor import (
    AVAILABLE_NO,
    AVAILABLE_UNKNOWN,
    AVAILABLE_YES,
    IORING_OPS,
    IORING_REGISTER_BUFFERS,
    IORING_REGISTER_PROBE,
    IORING_UNREGISTER_BUFFERS,
    IoUringParams,
    ProbeResult,
)
from dwcp.transport.sockopts import SO_ZEROCOPY, TCP_CONGESTION

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sockets, splice and io_uring")


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _write(root, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


# -- io_uring ------------------------------------------------------------------


class FakeUring:
    """io_uring_setup/register/close that succeed or raise the errno they are given."""

    def __init__(self, setup=None, probe=None, buffers=None, ops=(4, 5, 26, 27, 30, 47, 48)):
        self.setup_err, self.probe_err, self.buffers_err, self.ops = setup, probe, buffers, set(ops)
        self.calls: list[tuple] = []
        self.closed: list[int] = []

    def io_uring_setup(self, entries: int, params: IoUringParams) -> int:
        self.calls.append(("setup", entries))
        if self.setup_err:
            raise _oserror(self.setup_err)
        params.sq_entries, params.cq_entries, params.features = entries, 2 * entries, 0x1FFF
        return 7

    def io_uring_register(self, fd, opcode, arg, nr_args):
        self.calls.append(("register", fd, opcode, nr_args))
        if opcode == IORING_REGISTER_PROBE:
            if self.probe_err:
                raise _oserror(self.probe_err)
            arg.last_op, arg.ops_len = 48, 49
            for i in range(49):
                arg.ops[i].op, arg.ops[i].flags = i, 1 if i in self.ops else 0
        elif opcode == IORING_REGISTER_BUFFERS:
            assert nr_args == 1 and arg.iov_len > 0 and arg.iov_base
            if self.buffers_err:
                raise _oserror(self.buffers_err)
        return 0

    def close(self, fd: int) -> None:
        self.closed.append(fd)


def _proc(tmp_path, io_uring_disabled: str | None = "0"):
    if io_uring_disabled is not None:
        _write(tmp_path, "proc/sys/kernel/io_uring_disabled", io_uring_disabled + "\n")
    (tmp_path / "proc").mkdir(exist_ok=True)
    return str(tmp_path / "proc")


def test_io_uring_success_lists_opcodes_registers_a_buffer_and_closes_the_ring(tmp_path):
    sc = FakeUring()
    r = doctor.probe_io_uring(proc=_proc(tmp_path), syscalls=sc, machine="x86_64")
    assert r.available == AVAILABLE_YES
    assert "ops " + " ".join(IORING_OPS) in r.detail and "lacks" not in r.detail
    assert "registered buffers ok" in r.detail
    assert [c[2] for c in sc.calls if c[0] == "register"] == [
        IORING_REGISTER_PROBE,
        IORING_REGISTER_BUFFERS,
        IORING_UNREGISTER_BUFFERS,
    ]
    assert sc.closed == [7]
    assert any("io_uring_disabled -> '0'" in e for e in r.evidence)
    assert any("fd 7" in e and "0x1fff" in e for e in r.evidence)


def test_io_uring_reports_missing_opcodes(tmp_path):
    r = doctor.probe_io_uring(
        proc=_proc(tmp_path), syscalls=FakeUring(ops=(4, 5, 26, 27, 30)), machine="aarch64"
    )
    assert r.available == AVAILABLE_YES
    assert "lacks SEND_ZC SENDMSG_ZC" in r.detail


def test_io_uring_enosys_is_no(tmp_path):
    sc = FakeUring(setup=errno.ENOSYS)
    r = doctor.probe_io_uring(proc=_proc(tmp_path, None), syscalls=sc, machine="x86_64")
    assert r.available == AVAILABLE_NO and "ENOSYS" in r.detail
    assert any("io_uring_disabled -> absent" in e for e in r.evidence)
    assert any("ENOSYS (" in e for e in r.evidence)
    assert sc.closed == []  # no ring, nothing to close


@pytest.mark.parametrize(
    "disabled, says", [("2", "io_uring_disabled = 2"), ("1", "io_uring_group"), ("0", "seccomp")]
)
def test_io_uring_eperm_is_no_and_names_the_reason(tmp_path, disabled, says):
    r = doctor.probe_io_uring(
        proc=_proc(tmp_path, disabled), syscalls=FakeUring(setup=errno.EPERM), machine="x86_64"
    )
    assert r.available == AVAILABLE_NO
    assert "EPERM" in r.detail and says in r.detail


def test_io_uring_unexpected_errno_is_unknown_with_the_errno(tmp_path):
    r = doctor.probe_io_uring(proc=_proc(tmp_path), syscalls=FakeUring(setup=errno.EFAULT), machine="x86_64")
    assert r.available == AVAILABLE_UNKNOWN
    assert "EFAULT" in r.detail and any("EFAULT" in e for e in r.evidence)


def test_io_uring_refused_probe_and_buffers_still_close_the_ring(tmp_path):
    sc = FakeUring(probe=errno.EINVAL, buffers=errno.ENOMEM)
    r = doctor.probe_io_uring(proc=_proc(tmp_path), syscalls=sc, machine="x86_64")
    assert r.available == AVAILABLE_YES  # the ring works; what it lacks is in the detail
    assert "opcode probe refused (EINVAL" in r.detail and "registered buffers refused (ENOMEM" in r.detail
    assert sc.closed == [7]


def test_io_uring_does_not_guess_other_syscall_tables(tmp_path):
    sc = FakeUring()
    r = doctor.probe_io_uring(proc=_proc(tmp_path), syscalls=sc, machine="mips64")
    assert r.available == AVAILABLE_UNKNOWN and sc.calls == []


def test_io_uring_params_layout_matches_the_uapi_header():
    assert doctor.ctypes.sizeof(IoUringParams) == 120
    assert IoUringParams.sq_off.offset == 40 and IoUringParams.cq_off.offset == 80


# -- sockets -------------------------------------------------------------------


class FakeSock:
    """setsockopt raises the errno mapped to the option; getsockopt reads back what was set."""

    def __init__(self, errs: dict[int, int] | None = None, reads: dict[int, object] | None = None):
        self.errs, self.opts = errs or {}, dict(reads or {})
        self.closed = False

    def setsockopt(self, level, opt, value):
        if opt in self.errs:
            raise _oserror(self.errs[opt])
        self.opts.setdefault(opt, value)

    def getsockopt(self, level, opt, buflen=None):
        v = self.opts.get(opt, 0)
        return v.ljust(buflen, b"\0") if buflen else v

    def close(self):
        self.closed = True


def _opener(sock=None, err: int | None = None):
    made = []

    def open_socket(*args):
        if err is not None:
            raise _oserror(err)
        made.append(sock)
        return sock

    open_socket.made = made  # type: ignore[attr-defined]
    return open_socket


def test_zerocopy_yes_no_unknown():
    s = FakeSock()
    r = doctor.probe_zerocopy(open_socket=_opener(s))
    assert r.available == AVAILABLE_YES and s.closed
    assert (
        "MSG_ZEROCOPY" in r.dwcp and "loopback" in r.dwcp and "not implemented" not in r.dwcp
    )  # what sends do
    s = FakeSock({SO_ZEROCOPY: errno.ENOPROTOOPT})
    r = doctor.probe_zerocopy(open_socket=_opener(s))
    assert r.available == AVAILABLE_NO and "ENOPROTOOPT" in r.detail and s.closed
    r = doctor.probe_zerocopy(open_socket=_opener(err=errno.EMFILE))
    assert r.available == AVAILABLE_UNKNOWN and any("EMFILE" in e for e in r.evidence)


@linux
def test_splice_real_then_refused():
    assert doctor.probe_splice().available == AVAILABLE_YES

    def refuse(code):
        def splice(*a, **k):
            raise _oserror(code)

        return splice

    assert doctor.probe_splice(splice=refuse(errno.ENOSYS)).available == AVAILABLE_NO
    assert doctor.probe_splice(splice=refuse(errno.EINVAL)).available == AVAILABLE_NO
    r = doctor.probe_splice(splice=refuse(errno.EIO))
    assert r.available == AVAILABLE_UNKNOWN and "EIO" in r.detail


def test_af_xdp():
    assert doctor.probe_af_xdp(open_socket=_opener(FakeSock())).available == AVAILABLE_YES
    r = doctor.probe_af_xdp(open_socket=_opener(err=errno.EAFNOSUPPORT))
    assert r.available == AVAILABLE_NO and "CONFIG_XDP_SOCKETS" in r.detail
    r = doctor.probe_af_xdp(open_socket=_opener(err=errno.EPERM))
    assert r.available == AVAILABLE_NO and "CAP_NET_RAW" in r.detail
    assert doctor.probe_af_xdp(open_socket=_opener(err=errno.ENOMEM)).available == AVAILABLE_UNKNOWN


def test_busy_poll_reports_errno_and_host_knobs(tmp_path):
    _write(tmp_path, "proc/sys/net/core/busy_read", "0\n")
    _write(tmp_path, "proc/sys/net/core/busy_poll", "50\n")
    proc = str(tmp_path / "proc")
    r = doctor.probe_busy_poll(proc=proc, open_socket=_opener(FakeSock()))
    assert r.available == AVAILABLE_YES and "net.core.busy_poll = 50" in r.detail
    s = FakeSock({doctor.SO_BUSY_POLL: errno.EPERM})
    r = doctor.probe_busy_poll(proc=proc, open_socket=_opener(s))
    assert r.available == AVAILABLE_NO and "CAP_NET_ADMIN" in r.detail and s.closed
    assert any("EPERM (" in e for e in r.evidence)


def test_ktls_enoent_success_and_unexpected():
    def pair(err=None):
        socks = (FakeSock({doctor.TCP_ULP: err} if err else {}), FakeSock())
        return (lambda: socks), socks

    make, socks = pair(errno.ENOENT)
    r = doctor.probe_ktls(tcp_pair=make)
    assert r.available == AVAILABLE_NO and "ENOENT" in r.detail and "AES-256-GCM records" in r.dwcp
    assert all(s.closed for s in socks)
    make, _ = pair()
    assert doctor.probe_ktls(tcp_pair=make).available == AVAILABLE_YES
    make, _ = pair(errno.EBUSY)
    assert doctor.probe_ktls(tcp_pair=make).available == AVAILABLE_UNKNOWN


def _cc_tree(tmp_path, available: str, default: str = "cubic"):
    _write(tmp_path, "proc/sys/net/ipv4/tcp_available_congestion_control", available + "\n")
    _write(tmp_path, "proc/sys/net/ipv4/tcp_congestion_control", default + "\n")
    return str(tmp_path / "proc")


def test_congestion_not_listed_is_no_and_not_asked_for(tmp_path):
    def must_not_open(*a):
        raise AssertionError("asking for an unlisted control loads its module as root")

    r = doctor.probe_congestion(proc=_cc_tree(tmp_path, "reno cubic"), open_socket=must_not_open)
    assert r.available == AVAILABLE_NO and "have reno cubic; default cubic" in r.detail
    assert "modprobe tcp_bbr" in r.detail


def test_congestion_listed_is_set_and_read_back(tmp_path):
    proc = _cc_tree(tmp_path, "reno cubic bbr")
    r = doctor.probe_congestion(proc=proc, open_socket=_opener(FakeSock()))
    assert r.available == AVAILABLE_YES and r.detail.startswith("bbr settable")
    s = FakeSock({TCP_CONGESTION: errno.EPERM})
    r = doctor.probe_congestion(proc=proc, open_socket=_opener(s))
    assert r.available == AVAILABLE_NO and "CAP_NET_ADMIN" in r.detail
    s = FakeSock(reads={TCP_CONGESTION: b"cubic"})  # accepted, but something else is in force
    r = doctor.probe_congestion(proc=proc, open_socket=_opener(s))
    assert r.available == AVAILABLE_NO and "got cubic" in r.detail


# -- files ---------------------------------------------------------------------

MEMINFO = "MemTotal:       16000000 kB\nHugePages_Total:     {n}\nHugepagesize:       2048 kB\n"


@pytest.mark.parametrize(
    "total, thp, available",
    [(0, "always madvise [never]", AVAILABLE_NO), (0, "always [madvise] never", AVAILABLE_YES),
     (512, "always madvise [never]", AVAILABLE_YES), (None, None, AVAILABLE_UNKNOWN)],
)  # fmt: skip
def test_hugepages(tmp_path, total, thp, available):
    if total is not None:
        _write(tmp_path, "proc/meminfo", MEMINFO.format(n=total))
    if thp is not None:
        _write(tmp_path, "sys/kernel/mm/transparent_hugepage/enabled", thp + "\n")
    r = doctor.probe_hugepages(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys"))
    assert r.available == available
    if total:
        assert f"HugePages_Total {total} x 2048 kB" in r.detail
    assert ("base pages" in r.dwcp) == (thp is not None)  # dwcp madvises nothing: none of these is 'always'


def test_rdma(tmp_path):
    sys_root = str(tmp_path / "sys")
    r = doctor.probe_rdma(sys=sys_root)
    assert r.available == AVAILABLE_NO and "no RDMA devices" in r.detail
    (tmp_path / "sys/class/infiniband").mkdir(parents=True)
    assert doctor.probe_rdma(sys=sys_root).available == AVAILABLE_NO
    (tmp_path / "sys/class/infiniband/mlx5_0").mkdir()
    r = doctor.probe_rdma(sys=sys_root)
    assert r.available == AVAILABLE_YES and "mlx5_0" in r.detail


def test_socket_buffers(tmp_path):
    proc = str(tmp_path / "proc")
    assert doctor.probe_socket_buffers(proc=proc).available == AVAILABLE_UNKNOWN
    _write(tmp_path, "proc/sys/net/core/rmem_max", "4194304\n")
    _write(tmp_path, "proc/sys/net/core/wmem_max", "212992\n")
    _write(tmp_path, "proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t33554432\n")
    r = doctor.probe_socket_buffers(proc=proc)
    assert r.available == AVAILABLE_YES
    assert r.detail == "rmem_max 4 MiB, wmem_max 0.203125 MiB, tcp_rmem max 32 MiB, tcp_wmem max unknown"


INTERRUPTS = """\
           CPU0       CPU1
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
 37:          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config
 38:          0       7824 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:       5529          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
 40:          3          0 PCI-MSIX-0000:00:04.0   0-edge      eth1-TxRx-0
 41:          3          0 PCI-MSIX-0000:00:04.0   1-edge      eth10-TxRx-0
 42:          3          0 PCI-MSIX-0000:00:04.0   2-edge      eth1
NMI:          0          0   Non-maskable interrupts
"""


def test_parse_interrupts_matches_names_not_prefixes_of_other_names():
    assert doctor.parse_interrupts(INTERRUPTS, ["eth1"]) == [(40, "eth1-TxRx-0"), (42, "eth1")]
    assert doctor.parse_interrupts(INTERRUPTS, ["virtio2-input", "virtio2-output"]) == [
        (38, "virtio2-input.0"),
        (39, "virtio2-output.0"),
    ]
    assert doctor.parse_interrupts(INTERRUPTS, ["nothing"]) == []


def test_nics_queues_and_irq_affinity_from_fake_trees(tmp_path):
    net = tmp_path / "sys/class/net"
    for q in ("rx-0", "rx-1", "tx-0", "tx-1", "tx-2"):
        (net / "eth0/queues" / q).mkdir(parents=True)
    (tmp_path / "sys/devices/virtio2").mkdir(parents=True)
    os.symlink(tmp_path / "sys/devices/virtio2", net / "eth0/device")
    (net / "lo/queues/rx-0").mkdir(parents=True)
    (net / "eth1").mkdir()  # no queues directory
    _write(tmp_path, "proc/interrupts", INTERRUPTS)
    _write(tmp_path, "proc/irq/38/smp_affinity_list", "1\n")
    _write(tmp_path, "proc/irq/39/smp_affinity_list", "0\n")
    _write(tmp_path, "proc/irq/40/smp_affinity_list", "0-1\n")
    rs = {r.name: r for r in doctor.probe_nics(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys"))}
    assert set(rs) == {"nic:eth0", "nic:eth1"}  # lo is left out
    eth0 = rs["nic:eth0"]
    assert eth0.available == AVAILABLE_YES
    assert (
        eth0.detail
        == "2 rx / 3 tx queues; IRQs: 38 (virtio2-input.0) -> CPU 1; 39 (virtio2-output.0) -> CPU 0"
    )
    assert "2 x 3 tx queues" in eth0.dwcp
    eth1 = rs["nic:eth1"]
    assert eth1.available == AVAILABLE_UNKNOWN
    assert "40 (eth1-TxRx-0) -> CPU 0-1" in eth1.detail and "42 (eth1) -> CPU unknown" in eth1.detail


# -- the document and the command ----------------------------------------------


def test_probe_result_rejects_other_answers():
    with pytest.raises(ValueError):
        ProbeResult("x", "maybe", "", (), "")


def _check_schema(doc: dict) -> None:
    assert set(doc) == {"version", "probes"} and doc["version"] == 1
    assert isinstance(doc["probes"], list) and doc["probes"]
    for p in doc["probes"]:
        assert set(p) == {"name", "available", "detail", "evidence", "dwcp"}, p
        assert isinstance(p["name"], str) and p["name"]
        assert p["available"] in ("yes", "no", "unknown")
        assert isinstance(p["detail"], str) and p["detail"]
        assert isinstance(p["evidence"], list) and all(isinstance(e, str) for e in p["evidence"])
        assert isinstance(p["dwcp"], str) and p["dwcp"]
    names = [p["name"] for p in doc["probes"]]
    fixed = ["io_uring", "msg_zerocopy", "splice", "af_xdp", "so_busy_poll", "ktls", "congestion_control",
             "hugepages", "rdma", "socket_buffers", "backend"]  # fmt: skip
    assert names[: len(fixed)] == fixed
    assert all(n.startswith("nic:") for n in names[len(fixed) :])


def test_schema_on_empty_fake_trees(tmp_path):
    """Nothing readable: every probe still answers, and the document keeps its shape."""
    doc = doctor.report(doctor.run_probes(proc=str(tmp_path / "proc"), sys=str(tmp_path / "sys")))
    json.loads(json.dumps(doc))
    _check_schema(doc)


def _direct_io_uring_errno() -> int | None:
    try:
        sc = doctor.LibcSyscalls()
        fd = sc.io_uring_setup(4, IoUringParams())
    except OSError as exc:
        return exc.errno
    except AttributeError:
        return errno.ENOSYS
    os.close(fd)
    return None


def _direct_ktls() -> bool:
    c, s = doctor.loopback_tcp_pair()
    try:
        c.setsockopt(socket.IPPROTO_TCP, doctor.TCP_ULP, b"tls")
        return True
    except OSError:
        return False
    finally:
        c.close()
        s.close()


@linux
def test_dwcp_doctor_json_on_this_machine(capsys):
    assert main(["doctor", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    _check_schema(doc)
    probes = {p["name"]: p for p in doc["probes"]}
    assert probes["ktls"]["available"] == (AVAILABLE_YES if _direct_ktls() else AVAILABLE_NO)
    assert probes["backend"]["detail"].startswith(__import__("dwcp").backend)
    code = _direct_io_uring_errno()
    if code is not None:
        pytest.skip(f"io_uring_setup fails here: {errno.errorcode.get(code, code)}")
    assert probes["io_uring"]["available"] == AVAILABLE_YES, probes["io_uring"]


@linux
def test_dwcp_doctor_table(capsys):
    assert main(["doctor", "--evidence"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PROBE")
    for name in ("io_uring", "ktls", "congestion_control", "backend"):
        assert f"\n{name} " in out
    assert "dwcp: " in out and "$ " in out


def test_render_table_wraps_within_width():
    p = {"name": "x", "available": "no", "detail": "d " * 60, "evidence": ["e " * 60], "dwcp": "w " * 60}
    out = render_table([p], evidence=True, width=72)
    assert all(len(line) <= 72 for line in out.splitlines())
    assert "x                   no      d d" in out
