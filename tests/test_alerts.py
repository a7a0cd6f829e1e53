"""netdp's alert rules, checked and unit-tested by Debian's promtool.

The rule group lives once, in daemonset/components/monitoring/netdp.rules.yaml;
the PrometheusRule manifest is generated from it (scripts/gen_prometheusrule.py).
promtool's unit tests (tests/alerts/netdp.rules.test.yaml) replay synthetic
series; here they run, and are held to covering every alert both firing and
quiet. A kubelet restart is replayed once more, evaluated at every minute, so
no alert can fire in a gap between the hand-picked evaluation times.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from helpers import load_script
from prom import promtool, rule_file_alerts

from deviceplugin.metrics import metric_reference

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "daemonset" / "components" / "monitoring" / "netdp.rules.yaml"
MANIFEST = RULES.with_name("prometheusrule.yaml")
UNIT_TESTS = REPO / "tests" / "alerts" / "netdp.rules.test.yaml"
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
RESTART_GROUP = "a kubelet restart pages no one"
SEVERITIES = {"critical", "warning"}


def alerts() -> list[dict[str, Any]]:
    return rule_file_alerts(RULES)


def alert_names() -> list[str]:
    return [a["alert"] for a in alerts()]


def unit_tests() -> dict[str, Any]:
    return yaml.safe_load(UNIT_TESTS.read_text())


def run_ok(*args: str) -> str:
    result = promtool(*args)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


# ---- promtool --------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    out = run_ok("check", "rules", str(RULES))
    assert f"SUCCESS: {len(alerts())} rules found" in out


def test_promtool_unit_tests_pass() -> None:
    assert "SUCCESS" in run_ok("test", "rules", str(UNIT_TESTS))


def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A wrong expectation fails the run: the suite above is not vacuous."""
    doc = unit_tests()
    for group in doc["tests"]:
        for case in group["alert_rule_test"]:
            for alert in case.get("exp_alerts") or []:
                alert["exp_labels"]["severity"] = "info"
    doc["rule_files"] = [str(RULES)]
    broken = tmp_path / "broken.test.yaml"
    broken.write_text(yaml.safe_dump(doc))
    result = promtool("test", "rules", str(broken))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in unit_tests()["tests"]:
        for case in group["alert_rule_test"]:
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alert_names())
    assert firing == names, f"never seen firing: {sorted(names - firing)}"
    assert quiet == names, f"never seen quiet: {sorted(names - quiet)}"


def test_kubelet_restart_pages_no_one_at_any_minute(tmp_path: Path) -> None:
    doc = unit_tests()
    group = next(g for g in doc["tests"] if g.get("name") == RESTART_GROUP)
    assert {c["alertname"] for c in group["alert_rule_test"]} == set(alert_names())
    dense = copy.deepcopy(group)
    dense["alert_rule_test"] = [
        {"eval_time": f"{minute}m", "alertname": name, "exp_alerts": []}
        for minute in range(0, 70)
        for name in alert_names()
    ]
    path = tmp_path / "restart.test.yaml"
    path.write_text(
        yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [dense]})
    )
    run_ok("test", "rules", str(path))


# ---- what each alert carries -----------------------------------------------------------


def labels_of_metrics_in(expr: str) -> set[str]:
    """The labels of the netdp metrics an expression reads (histogram series included)."""
    specs = {m.name: m for m in metric_reference()}
    found = set()
    for name in re.findall(r"\bnetdp_[a-z0-9_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in specs or base in specs, f"{name} is not a netdp metric"
        found |= set(specs[name if name in specs else base].labels)
    return found


@pytest.mark.parametrize("alert", alerts(), ids=lambda a: a["alert"])
def test_alert_says_what_and_where(alert: dict[str, Any]) -> None:
    assert re.fullmatch(r"Netdp[A-Z][A-Za-z]+", alert["alert"])
    assert alert["labels"]["severity"] in SEVERITIES
    notes = alert["annotations"]
    assert set(notes) == {"summary", "description", "runbook_url"}
    assert notes["summary"].endswith(".") and "{{" not in notes["summary"]
    description = notes["description"]
    where = {"pool", "pci_address"} & labels_of_metrics_in(alert["expr"])
    if "absent(" not in alert["expr"]:
        where.add("node")  # every scraped series has the node label (PodMonitor relabeling)
    for label in where:
        assert f"{{{{ $labels.{label} }}}}" in description, f"description does not name {label}"


def github_anchors(markdown: str) -> set[str]:
    """Heading anchors as GitHub renders them: lower case, punctuation dropped, - for spaces.

    Lines inside fenced code blocks are not headings, even when they start with `#`.
    """
    anchors = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#+ (.+)$", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-"))
    return anchors


def test_every_runbook_is_a_section_of_troubleshooting() -> None:
    anchors = github_anchors(TROUBLESHOOTING.read_text())
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert (REPO / page).resolve() == TROUBLESHOOTING, url
        assert anchor == alert["alert"].lower(), f"{alert['alert']}: runbook anchor {anchor}"
        assert anchor in anchors, f"docs/troubleshooting.md has no section #{anchor}"


def test_github_anchors() -> None:
    text = "# A bad configuration\n```sh\n# needs a cluster\n```\n## Stuck on `kernel.org/virt`\n"
    assert github_anchors(text) == {"a-bad-configuration", "stuck-on-kernelorgvirt"}


# ---- the PrometheusRule is the rules file ----------------------------------------------


def load_generator() -> ModuleType:
    return load_script(REPO / "scripts" / "gen_prometheusrule.py")


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    gen = load_generator()
    assert gen.is_fresh(), "prometheusrule.yaml is stale: run python scripts/gen_prometheusrule.py"
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["spec"] == yaml.safe_load(RULES.read_text())
    # Byte for byte: the manifest's spec is the rules file's text, indented.
    indented = "".join(
        f"  {line}" if line.strip() else line
        for line in gen.rule_groups(RULES.read_text()).splitlines(keepends=True)
    )
    assert MANIFEST.read_text().endswith("spec:\n" + indented)


def test_a_stale_manifest_is_noticed(tmp_path: Path) -> None:
    gen = load_generator()
    rules, manifest = tmp_path / "rules.yaml", tmp_path / "manifest.yaml"
    rules.write_text(RULES.read_text())
    manifest.write_text(MANIFEST.read_text())
    assert gen.is_fresh(rules, manifest)
    rules.write_text(RULES.read_text().replace("for: 15m", "for: 20m", 1))
    assert not gen.is_fresh(rules, manifest)
