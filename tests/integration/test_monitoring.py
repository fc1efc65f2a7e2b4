"""monitoring/: the recording and alerting rules (promtool check rules, promtool test rules) and the
Grafana dashboard, every query of which names metrics a real daemon exports, and (slow) a real
Prometheus, loading the rules and scraping a running daemon, evaluates without an error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request

import pytest

from dwcp._testbase.daemons import start_daemon

MON = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "monitoring")
RULES = [os.path.join(MON, f) for f in ("recording.yml", "alerts.yml")]
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="no promtool (apt-get install prometheus)"
)


def _queries() -> list[str]:
    dash = json.load(open(os.path.join(MON, "dashboard.json")))
    return [t["expr"].replace("$job", "dwcp") for p in dash["panels"] for t in p["targets"]]


@needs_promtool
def test_the_rules_pass_promtool_check_and_their_unit_tests():
    r = subprocess.run(["promtool", "check", "rules", *RULES], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["promtool", "test", "rules", "tests.yml"], capture_output=True, text=True, timeout=120,
                       cwd=MON)  # fmt: skip
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@pytest.fixture
def daemon(tmp_path):
    proc, _cfg, st = start_daemon(tmp_path, '[health]\nsla_throughput_bytes_per_s = "1Gbit"\n')
    yield st["metrics_endpoint"]
    proc.terminate()
    proc.wait(20)


def test_the_dashboard_is_well_formed_and_names_what_a_daemon_exports(daemon):
    dash = json.load(open(os.path.join(MON, "dashboard.json")))
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(p["targets"] for p in dash["panels"])
    for p in dash["panels"]:
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and p["datasource"]["uid"] == "${datasource}"
    text = urllib.request.urlopen(daemon + "metrics", timeout=10).read().decode()
    exported = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    exported |= {n + "_total" for n in exported} | {
        n + s for n in exported for s in ("_bucket", "_sum", "_count")
    }
    recorded = set(re.findall(r"record: (\S+)", "".join(open(f).read() for f in RULES)))
    rules_text = "".join(open(f).read() for f in RULES)
    for q in [*_queries(), *re.findall(r"expr: \|?\s*([^\n]+(?:\n {12,}[^\n]+)*)", rules_text)]:
        bare = re.sub(r'\{[^}]*\}|"[^"]*"', "", q)  # label matchers and strings name no metric
        for name in re.findall(r"\b((?:dwcp|process|up)[a-z0-9_:]*)", bare):
            if name == "up":
                continue
            assert name in exported or name in recorded, (name, q)
    assert "dwcp_sla_throughput_bytes_per_second 1.25e+08" in text  # [health] sla_throughput_bytes_per_s


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus (apt-get install prometheus)")
def test_a_real_prometheus_evaluates_every_rule_and_dashboard_query(daemon, tmp_path):
    from dwcp._testbase.prom import prometheus

    with prometheus(tmp_path, [daemon.split("//")[1].strip("/")], RULES) as query:
        for q in _queries():
            got = query(q)
            assert got["status"] == "success", (q, got)
        with urllib.request.urlopen(query.api + "rules", timeout=10) as r:
            groups = json.load(r)["data"]["groups"]
        rules = [x for g in groups for x in g["rules"]]
        assert len(rules) == 14 and all(x["health"] in ("ok", "unknown") for x in rules), rules
