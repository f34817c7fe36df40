"""docs/operations.md documents every Prometheus metric and every log event the code emits.

The names are read from the code (AST, not a list kept by hand): a new metric or log event
fails this test until its row is added to the reference tables at the end of
docs/operations.md. A metric's row must also name each of its labels.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
CODE_DIRS = ("core", "agent", "proxy", "controlplane", "cli", "demo", "testing")
PLUGIN_SRC = ROOT / "cni" / "cmd" / "meshnode-cni"  # the Go plugin's sources
# The plugin's log calls: log.info("msg", ...), log.warn(...), log.error(...).
GO_LOG = re.compile(r'\blog\.(?:info|warn|error)\(\s*"((?:[^"\\]|\\.)*)"')

METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal",
               "msg"}
# Loggers in this code base: `log`, `self._log`, `conn.log`, bound ones (`blog`, `plog`),
# the access log, or a `.bind(...)` result. Validation helpers with an `.error()` method
# (controlplane/yamlview.py) are not loggers.
LOGGER = re.compile(r"(^|\.)_?(log|blog|plog|access|logger)$|\.bind\(")


@dataclass(frozen=True)
class Metric:
    name: str  # as exposed on /metrics (counters with `_total`)
    labels: tuple[str, ...]
    where: str


@dataclass(frozen=True)
class Event:
    name: str
    where: str


def _module_lists(tree: ast.Module) -> dict[str, list[ast.expr]]:
    out: dict[str, list[ast.expr]] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.List | ast.Tuple)):
            out[node.targets[0].id] = list(node.value.elts)
    return out


def _labels(expr: ast.expr | None, consts: dict[str, list[ast.expr]]) -> tuple[str, ...]:
    if expr is None:
        return ()
    if isinstance(expr, ast.Name):
        return _labels(ast.List(elts=consts.get(expr.id, [])), consts)
    if isinstance(expr, ast.Starred):
        return _labels(expr.value, consts)
    if isinstance(expr, ast.List | ast.Tuple):
        out: list[str] = []
        for e in expr.elts:
            if isinstance(e, ast.Constant) and isinstance(e.value, str):
                out.append(e.value)
            else:
                out.extend(_labels(e, consts))
        return tuple(out)
    raise AssertionError(f"cannot read metric labels from {ast.unparse(expr)}")


def metrics_in(source: str, where: str) -> list[Metric]:
    tree = ast.parse(source)
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and n.module == "prometheus_client" for a in n.names}
    consts = _module_lists(tree)
    found = []
    for n in ast.walk(tree):
        if not isinstance(n, ast.Call):
            continue
        f = n.func
        kind = (f.id if isinstance(f, ast.Name) and f.id in imported else
                f.attr if isinstance(f, ast.Attribute)
                and ast.unparse(f.value) in ("prometheus_client", "prom") else None)
        if kind not in METRIC_TYPES or not n.args:
            continue
        first = n.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        name = first.value
        if kind == "Counter":
            name = name.removesuffix("_total") + "_total"
        label_expr = n.args[2] if len(n.args) > 2 else next(
            (k.value for k in n.keywords if k.arg == "labelnames"), None)
        found.append(Metric(name, _labels(label_expr, consts), f"{where}:{n.lineno}"))
    return found


def events_in(source: str, where: str) -> list[Event]:
    found = []
    for n in ast.walk(ast.parse(source)):
        if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr in LOG_METHODS and n.args):
            continue
        if not LOGGER.search(ast.unparse(n.func.value)):
            continue
        first = n.args[0]
        # `log.warning("a" if x else "b", ...)` emits either name.
        options = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
        for o in options:
            if isinstance(o, ast.Constant) and isinstance(o.value, str):
                found.append(Event(o.value, f"{where}:{n.lineno}"))
    return found


def _sources() -> list[tuple[str, str]]:
    files = [p for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    return [(p.read_text(), str(p.relative_to(ROOT))) for p in files]


def all_metrics() -> list[Metric]:
    return [m for text, where in _sources() for m in metrics_in(text, where)]


def all_events() -> list[Event]:
    events = [e for text, where in _sources() for e in events_in(text, where)]
    for path in sorted(PLUGIN_SRC.glob("*.go")):
        text = path.read_text()
        where = str(path.relative_to(ROOT))
        events += [Event(m.group(1), f"{where}:{text.count(chr(10), 0, m.start()) + 1}")
                   for m in GO_LOG.finditer(text)]
    return events


def documented(doc: str, name: str) -> list[str]:
    """The doc's lines naming `name` in backticks (a metric may be followed by `{labels}`)."""
    pat = re.compile("`" + re.escape(name) + "[`{]")
    return [line for line in doc.splitlines() if pat.search(line)]


def test_the_extractors_see_the_code() -> None:
    # Guards against an extractor that silently finds nothing.
    metrics = {m.name: m for m in all_metrics()}
    events = {e.name for e in all_events()}
    assert len(metrics) >= 25 and len(events) >= 150
    assert metrics["meshnode_pods"].labels == ("state",)
    assert metrics["meshnode_enrollments_total"].labels == ("backend",)
    assert metrics["istio_tcp_connections_opened_total"].labels[0] == "reporter"
    assert metrics["meshnode_proxy_dns_queries_total"].labels == ("proto",)
    assert "meshnode_hbone_handshake_failures_total" in metrics
    assert {"pod_enrolled", "hbone_denied", "hbone_refused", "cni_install_repaired",
            "zds_proxy_hello", "ads_nack", "pod captured"} <= events
    # collections.Counter and yamlview's `.error()` are not metrics or log events.
    assert not {"must not be empty", "duplicate field"} & events


def test_an_undocumented_name_is_caught() -> None:
    src = ('from prometheus_client import Counter\nimport structlog\n'
           'log = structlog.get_logger()\nX = Counter("meshnode_new_thing", "h", ["a"])\n'
           'log.info("brand_new_event")\n')
    doc = DOC.read_text()
    assert [m.name for m in metrics_in(src, "x")] == ["meshnode_new_thing_total"]
    assert [e.name for e in events_in(src, "x")] == ["brand_new_event"]
    assert not documented(doc, "meshnode_new_thing_total")
    assert not documented(doc, "brand_new_event")


@pytest.mark.parametrize("metric", all_metrics(), ids=lambda m: m.name)
def test_every_metric_is_documented_with_its_labels(metric: Metric) -> None:
    lines = documented(DOC.read_text(), metric.name)
    assert lines, (f"{metric.name} ({metric.where}) is not in docs/operations.md: add a row "
                   "to the metrics reference")
    missing = [lb for lb in metric.labels if not any(lb in line for line in lines)]
    assert not missing, f"{metric.name}: labels {missing} not named in its row"


@pytest.mark.parametrize("event", sorted({e.name: e for e in all_events()}.values(),
                                         key=lambda e: e.name), ids=lambda e: e.name)
def test_every_log_event_is_documented(event: Event) -> None:
    assert documented(DOC.read_text(), event.name), (
        f"log event {event.name!r} ({event.where}) is not in docs/operations.md: add a row "
        "to the log events reference")
