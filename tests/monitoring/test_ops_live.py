"""The ops dashboard in a real Chromium, and the deploy/ monitoring files
(point 3) checked against a live node's /metrics so they cannot drift from the code."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.support.browser import (
    PASSWORD,
    Tab,
    User,
    create_conversation,
    launch_chromium,
    make_user,
    tab_factory,
)
from tests.support.live import ROOT, DaphneNode, Stack, http
from tests.support.names import unique

pytestmark = pytest.mark.timeout(150)

NODE_NAME = "ops-node-1"
# A maintenance pass, hence an `ops:stats` publication, every second.
FAST = {"HEARTBEAT_INTERVAL": "2", "PING_TIMEOUT": "4"}
ALERTS = ROOT / "deploy" / "prometheus-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
# Series Prometheus or an exporter makes, not a Tether node.
EXTERNAL_METRICS = {"up", "probe_success"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


@pytest.fixture(scope="module")
def ops_node(
    embedded_stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaphneNode]:
    node = DaphneNode(
        stack=embedded_stack,
        name=NODE_NAME,
        log_dir=tmp_path_factory.mktemp("ops"),
        settings=dict(FAST),
    )
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium()


@pytest.fixture
def tab(browser: Any, ops_node: DaphneNode) -> Iterator[Callable[[], Tab]]:
    yield from tab_factory(browser, ops_node)


def series(metric: str, node: str = NODE_NAME) -> str:
    return (
        f'[data-testid="ops-chart"][data-metric="{metric}"] '
        f'[data-testid="ops-series"][data-node="{node}"]'
    )


def series_data(t: Tab, metric: str) -> dict[str, str]:
    return t.page.eval_on_selector(series(metric), "e => ({...e.dataset})")


def wait_series(t: Tab, metric: str, condition: str, arg: Any = None) -> None:
    """Wait until the node's line in chart `metric` satisfies `condition` on its dataset `d`."""
    t.page.wait_for_function(
        f"""([sel, arg]) => {{
            const e = document.querySelector(sel);
            if (!e) return false;
            const d = e.dataset;
            return {condition};
        }}""",
        arg=[series(metric), arg],
    )


def history_count(node: DaphneNode, token: str) -> int:
    status, body, _ = http(
        "GET",
        node.url + "/api/topics/ops:stats/history/",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 200, body
    return sum(1 for p in body["publications"] if p["data"].get("node") == NODE_NAME)


def test_ops_page_is_staff_only_and_charts_each_node_live(
    ops_node: DaphneNode, tab: Callable[[], Tab]
) -> None:
    staff_name = unique("ops")
    ops_node.create_superuser(staff_name, PASSWORD)
    staff = User(staff_name, "", 0)
    alice, bob = make_user(ops_node, unique("alice")), make_user(ops_node, unique("bob"))
    token = ops_node.staff_token(unique("opsapi"))

    # Anonymous: the login form, coming back to /ops/ (Tab.login asserts both),
    # then the staff member sees their node with its figures.
    s = tab()
    s.login(staff, "/ops/")
    node_card = s.page.wait_for_selector(f'[data-testid="ops-node"][data-node="{NODE_NAME}"]')
    assert node_card.get_attribute("data-alive") == "true"
    assert s.by_id("nav-ops").is_visible()
    for metric in (
        "connections",
        "messages_per_s",
        "publications_per_s",
        "deliveries_per_s",
        "latency_ms.send_ack_p99",
        "latency_ms.publish_deliver_p99",
        "heartbeat_timeouts_per_min",
        "closes_per_min",
        "process.rss_mib",
        "process.event_loop_lag_ms",
    ):
        assert s.page.locator(f'[data-testid="ops-chart"][data-metric="{metric}"]').count() == 1
    # The page's own stream socket is on the node: connections are at least 1.
    wait_series(s, "connections", "Number(d.points) >= 2 && Number(d.last) >= 1")
    card_text = node_card.inner_text()
    assert "MiB" in card_text and "ms" in card_text, card_text
    fds = s.page.inner_text(f'[data-testid="ops-node"][data-node="{NODE_NAME}"] [data-field="fds"]')
    open_fds, limit = (int(x) for x in fds.split(" / "))
    assert 0 < open_fds < limit

    # Nothing stored yet on this fresh node: the messages line is flat at zero.
    before = series_data(s, "messages_per_s")
    assert float(before["max"]) == 0.0, before
    assert series_data(s, "latency_ms.send_ack_p99")["points"] == "0"

    # A chat message sent from the chat page moves the charts.
    cid = create_conversation(ops_node, alice, bob)
    a = tab()
    a.login(alice)
    a.open(cid)
    a.send("counted on the ops page")
    a.wait_bodies(["counted on the ops page"])
    wait_series(s, "messages_per_s", "Number(d.max) > 0")
    wait_series(s, "latency_ms.send_ack_p99", "Number(d.points) >= 1 && Number(d.max) > 0")
    wait_series(s, "deliveries_per_s", "Number(d.max) > 0")
    # Both sockets (ops stream, alice's chat) count, and the line keeps growing live.
    wait_series(s, "connections", "Number(d.last) >= 2")
    points = int(series_data(s, "connections")["points"])
    wait_series(s, "connections", "Number(d.points) > arg", points + 1)
    assert s.page.locator('[data-testid="connection-status"][data-state="connected"]').count()

    # A page opened later starts from the topic's history, not from empty.
    published = history_count(ops_node, token)
    assert published >= 3
    late = tab()
    late.context.add_cookies(s.context.cookies())
    late.page.goto(ops_node.url + "/ops/")
    late.page.wait_for_selector(series("connections"), state="attached")
    first_paint = int(series_data(late, "connections")["points"])
    assert first_paint >= published, (first_paint, published)
    wait_series(late, "messages_per_s", "Number(d.max) > 0")

    # A signed-in user who is not staff gets 403, and no nav link.
    assert a.page.locator('[data-testid="nav-ops"]').count() == 0
    response = a.page.goto(ops_node.url + "/ops/")
    assert response is not None and response.status == 403
    assert a.page.locator('[data-testid="ops-node"]').count() == 0
    # The feed itself is staff-only too.
    status, _, _ = http(
        "GET",
        ops_node.url + "/api/topics/ops:stats/history/",
        headers={"Authorization": f"Bearer {alice.token}"},
    )
    assert status == 403

    assert not s.console_errors and not late.console_errors, (s.console_errors, late.console_errors)


def test_ops_page_anonymous_goes_to_login(ops_node: DaphneNode, tab: Callable[[], Tab]) -> None:
    t = tab()
    response = t.page.goto(ops_node.url + "/ops/")
    assert response is not None and response.status == 200
    assert "/accounts/login/" in t.page.url
    assert "next=/ops/" in t.page.url.replace("%2F", "/")
    assert t.page.locator('[data-testid="ops-node"]').count() == 0


# --- deploy/ files against /metrics --------------------------------------------------

METRIC_RE = re.compile(r"\b((?:tether|django|process)_[a-z0-9_]+)\b")
SELECTOR_RE = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\{([^}]*)\}")
LABEL_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def exposed(text: str) -> tuple[set[str], dict[str, set[str]]]:
    """Series names a node exposes (from its # TYPE lines, so labelled families with no
    sample yet count too) and the label names seen per series name."""
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            if kind == "histogram":
                names.update(family + s for s in ("_bucket", "_count", "_sum"))
            elif kind == "counter" and not family.endswith("_total"):
                names.add(family + "_total")
            else:
                names.add(family)
        elif line and not line.startswith("#"):
            match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?", line)
            assert match, line
            seen = labels.setdefault(match.group(1), set())
            seen.update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
    return names, labels


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert rules
    return rules


def dashboard_exprs() -> list[str]:
    model = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in model["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    return exprs


def test_alert_rules_and_dashboard_are_well_formed() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        assert rule["expr"].strip() and re.fullmatch(r"\d+[smh]", rule["for"]), rule
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule
        notes = rule["annotations"]
        assert notes["summary"].strip() and "Runbook row" in notes["description"], rule

    model = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in model["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in model["panels"]]
    assert len(ids) == len(set(ids))
    for panel in model["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_deploy_files_use_only_metrics_a_live_node_exposes(
    ops_node: DaphneNode, production_stack: Stack, make_node: Callable[..., DaphneNode]
) -> None:
    # Some labelled samples, so that label names can be checked where they exist.
    http("GET", ops_node.url + "/api/stats/")
    status, text, _ = http("GET", ops_node.url + "/metrics")
    assert status == 200, text
    names, labels = exposed(text)
    # The database pool's series exist where there is a pool: on PostgreSQL.
    production = make_node(production_stack, unique("ops-pg-"))
    status, text, _ = http("GET", production.url + "/metrics")
    assert status == 200, text
    pg_names, pg_labels = exposed(text)
    assert {"tether_db_connections", "tether_db_pool_max"} <= pg_names - names
    names |= pg_names
    for metric, seen in pg_labels.items():
        labels.setdefault(metric, set()).update(seen)
    assert "tether_connects_total" in names and "tether_send_ack_seconds_bucket" in names

    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    used: set[str] = set()
    for expr in exprs:
        used.update(METRIC_RE.findall(expr))
        for metric, selector in SELECTOR_RE.findall(expr):
            if metric in EXTERNAL_METRICS or metric in {"by", "without"}:
                continue
            assert metric in names, f"{metric} (in {expr!r}) is not on /metrics"
            # A label the node never emits would make the selector match nothing.
            known = label_names(metric, labels)
            for label in LABEL_RE.findall(selector):
                if label in TARGET_LABELS or not known:
                    continue
                assert label in known, f"{metric} has no label {label!r} ({expr!r})"
    missing = sorted(m for m in used if m not in names)
    assert not missing, f"not exposed by a node: {missing}"
    assert len({m for m in used if m.startswith("tether_")}) >= 15, used

    # The other direction: every Tether series family has a dashboard panel.
    dashboard = " ".join(dashboard_exprs())
    families = {
        re.sub(r"_(bucket|count|sum)$", "", n)
        for n in names
        if n.startswith("tether_") and not n.endswith("_created")
    }
    unused = sorted(f for f in families if f not in dashboard)
    assert not unused, f"metrics with no dashboard panel: {unused}"

    # Grouping labels must exist on a metric they group.
    for expr in exprs:
        grouped = {g.strip() for clause in GROUPING_RE.findall(expr) for g in clause.split(",")}
        grouped -= TARGET_LABELS | {"le", ""}
        known = [label_names(m, labels) for m in METRIC_RE.findall(expr)]
        for label in grouped:
            assert any(label in k for k in known), f"no metric in {expr!r} has label {label!r}"


def label_names(metric: str, seen: dict[str, set[str]]) -> set[str]:
    """A series' label names: as sampled on /metrics, else as declared in monitoring.metrics
    (a labelled family shows no sample until something is counted)."""
    if seen.get(metric):
        return seen[metric]
    from prometheus_client.metrics import MetricWrapperBase

    from monitoring import metrics as declared

    family = re.sub(r"_(total|bucket|count|sum|created)$", "", metric)
    for value in vars(declared).values():
        if isinstance(value, MetricWrapperBase) and value._name == family:
            return set(value._labelnames)
    return set()


def test_ops_page_shows_every_node_and_marks_a_stopped_one_silent(
    production_stack: Stack, make_node: Callable[..., DaphneNode], browser: Any
) -> None:
    """On PostgreSQL + Redis the topic is shared: one page sees every node's figures."""
    a = make_node(production_stack, unique("ops-a-"), **FAST)
    b = make_node(production_stack, unique("ops-b-"), **FAST)
    staff_name = unique("ops")
    a.create_superuser(staff_name, PASSWORD)
    t = Tab(browser, a)
    try:
        t.login(User(staff_name, "", 0), "/ops/")
        for node in (a, b):
            card = f'[data-testid="ops-node"][data-node="{node.name}"]'
            t.page.wait_for_selector(f'{card}[data-alive="true"]')
            t.page.wait_for_selector(series("connections", node.name), state="attached")
        # The page's socket is on node a only.
        t.page.wait_for_function(
            """([sa, sb]) => {
                const la = document.querySelector(sa), lb = document.querySelector(sb);
                return la && lb && Number(la.dataset.last) >= 1 && lb.dataset.last === "0";
            }""",
            arg=[series("connections", a.name), series("connections", b.name)],
        )
        b.stop()
        # No figures from b any more: after 15 s its card says so; a's stays live.
        t.page.wait_for_selector(
            f'[data-testid="ops-node"][data-node="{b.name}"][data-alive="false"]', timeout=30_000
        )
        alive_a = f'[data-testid="ops-node"][data-node="{a.name}"]'
        assert t.page.get_attribute(alive_a, "data-alive") == "true"
        assert not t.console_errors, t.console_errors
    finally:
        t.close()
