"""The Kubernetes manifests (deploy/kubernetes/), as a cluster would receive them.

Each kustomization is rendered by `kubectl kustomize` (kustomize's own rules:
generated names, overlays, image rewrites), every rendered object is validated
against the Kubernetes schemas of pinned versions with unknown fields refused,
and then the properties the drain and the heartbeat rely on are read from the
rendered objects: the probes, the stop sequence against the node's drain, the
objects that must find each other by labels and names, the ingress timeouts
against the heartbeat, the node's name and command, non-root.

Without kubectl (Debian: kubernetes-client) the tests skip loudly, or fail when
REQUIRE_SERVICES=1; KUBECTL names another binary.

Each property is a `check_*` function over the rendered objects, and
`test_a_broken_property_is_caught` breaks each one in a copy and expects its
check to fail, so that a check cannot quietly pass on anything.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
import yaml

from project.config import BY_NAME, EXAMPLE_SECRET_KEY, ConfigError, load
from realtime.node.runtime import DRAIN_SECONDS, SHUTDOWN_BOUND_SECONDS
from tests.support import services
from tests.support.live import ROOT
from tests.support.services import require_or_skip

MANIFESTS = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ("base", "overlays/production")
SECRET_EXAMPLE = MANIFESTS / "base" / "secret.example.yaml"
# The oldest version whose API server takes everything used (the preStop sleep
# action is on by default from 1.30) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# After the drain the node removes its records and daphne stops: seconds allowed
# on top of DRAIN_SECONDS before the kubelet's SIGKILL would cut that short.
CLEANUP_SECONDS = SHUTDOWN_BOUND_SECONDS - DRAIN_SECONDS
HEARTBEAT_INTERVAL = BY_NAME["HEARTBEAT_INTERVAL"].default
TIMEOUT_ANNOTATIONS = (
    "nginx.ingress.kubernetes.io/proxy-read-timeout",
    "nginx.ingress.kubernetes.io/proxy-send-timeout",
)

Docs = list[dict[str, Any]]


# ------------------------------------------------------------------ rendering


def kubectl() -> str:
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        require_or_skip(
            "the Kubernetes manifest tests render deploy/kubernetes/ with `kubectl kustomize`, "
            "and no kubectl was found on PATH (Debian: apt-get install kubernetes-client; "
            "or set KUBECTL to a kubectl binary)"
        )
    return found


def render(kustomization: str) -> Docs:
    done = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"kubectl kustomize {kustomization}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS)
def rendered(request: pytest.FixtureRequest, pytestconfig: pytest.Config) -> Docs:
    # As the services' fixtures do: lets require_or_skip print its banner past capture.
    services._config = pytestconfig
    return render(request.param)


@pytest.fixture(scope="module")
def base(pytestconfig: pytest.Config) -> Docs:
    services._config = pytestconfig
    return render("base")


def one(docs: Docs, kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: Docs) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one container: the node"
    return containers[0]


def config_map(docs: Docs) -> dict[str, str]:
    return one(docs, "ConfigMap")["data"]


def secret_example() -> dict[str, Any]:
    return yaml.safe_load(SECRET_EXAMPLE.read_text())


def subset(labels: dict[str, str], of: dict[str, str]) -> bool:
    return bool(labels) and all(of.get(key) == value for key, value in labels.items())


# ----------------------------------------------------------------- the checks


def check_schemas(docs: Docs) -> None:
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(part) for part in exc.path)
                raise AssertionError(f"{name} against {version}: {path}: {exc.message}") from None
            except kubernetes_validate.SchemaNotFoundError as exc:
                # An unknown kind or apiVersion is an error, not a warning.
                raise AssertionError(exc.message) from None


def probe_path(probe: dict[str, Any]) -> str:
    return probe["httpGet"]["path"]


def check_probes(docs: Docs) -> None:
    node = container(docs)
    assert probe_path(node["readinessProbe"]) == "/ready/"
    assert probe_path(node["livenessProbe"]) == "/health/"
    port_names = {port["name"] for port in node["ports"]}
    hosts = BY_NAME["ALLOWED_HOSTS"].parse(config_map(docs)["ALLOWED_HOSTS"])
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = node.get(kind)
        if probe is None:
            continue
        assert probe["httpGet"]["port"] in port_names, f"{kind} aims at no container port"
        # The kubelet's default Host is the pod's address, which Django refuses (400).
        host = {h["name"]: h["value"] for h in probe["httpGet"].get("httpHeaders", [])}.get("Host")
        assert host in hosts, f"{kind} sends Host {host!r}, not in ALLOWED_HOSTS {hosts}"


def pre_stop_seconds(node: dict[str, Any]) -> int:
    pre_stop = node.get("lifecycle", {}).get("preStop")
    assert pre_stop, "no preStop: SIGTERM would race the endpoint's removal"
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep"), f"preStop is not a sleep: {command}"
    return int(command[1])


def check_stop_sequence(docs: Docs) -> None:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sleep = pre_stop_seconds(container(docs))
    assert sleep >= 5, "the endpoint needs a few seconds to leave the Service and the ingress"
    # The grace period counts from the start of preStop, not from SIGTERM.
    needed = sleep + DRAIN_SECONDS + CLEANUP_SECONDS
    grace = pod.get("terminationGracePeriodSeconds", 30)
    assert grace >= needed, (
        f"terminationGracePeriodSeconds {grace} < preStop {sleep} + drain {DRAIN_SECONDS:g} "
        f"+ clean-up {CLEANUP_SECONDS:g}: SIGKILL would cut the drain short"
    )


def check_labels_and_names(docs: Docs) -> None:
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert subset(deployment["spec"]["selector"]["matchLabels"], pod_labels)

    pdb = one(docs, "PodDisruptionBudget")
    assert subset(pdb["spec"]["selector"]["matchLabels"], pod_labels), "PDB covers no pod"
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")

    hpa = one(docs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    ), f"the autoscaler scales {target}"
    assert hpa["spec"]["minReplicas"] >= 2, "one pod draining must never leave none"
    # Otherwise every `kubectl apply` resets what the autoscaler chose.
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"

    service = one(docs, "Service")
    assert subset(service["spec"]["selector"], pod_labels), "the Service selects no pod"
    node_ports = container(docs)["ports"]
    for port in service["spec"]["ports"]:
        target_port = port["targetPort"]
        key = "name" if isinstance(target_port, str) else "containerPort"
        assert any(p[key] == target_port for p in node_ports), f"targetPort {target_port}"

    names = {doc["kind"]: doc["metadata"]["name"] for doc in docs}
    env_from = container(docs)["envFrom"]
    # {"configMapRef": name, "secretRef": name}
    referenced = {kind: ref["name"] for item in env_from for kind, ref in item.items()}
    assert referenced["configMapRef"] == names["ConfigMap"], "envFrom misses the generated map"
    assert referenced["secretRef"] == secret_example()["metadata"]["name"]


def check_ingress(docs: Docs) -> None:
    ingress = one(docs, "Ingress")
    service = one(docs, "Service")
    service_ports = {p["name"] for p in service["spec"]["ports"]} | {
        p["port"] for p in service["spec"]["ports"]
    }
    annotations = ingress["metadata"].get("annotations", {})
    for name in TIMEOUT_ANNOTATIONS:
        seconds = int(str(annotations.get(name, "60")).rstrip("s"))
        assert seconds > HEARTBEAT_INTERVAL, (
            f"{name} {seconds} s would close idle sockets between heartbeats "
            f"(HEARTBEAT_INTERVAL {HEARTBEAT_INTERVAL} s)"
        )
    routed: set[str] = set()
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            port = backend["port"].get("name", backend["port"].get("number"))
            if backend["name"] == service["metadata"]["name"] and port in service_ports:
                routed.add(path["path"])
    assert {"/", "/ws/"} <= routed, f"routed to the Service: {sorted(routed)}"
    tls_hosts = {host for tls in ingress["spec"].get("tls", []) for host in tls["hosts"]}
    assert {rule["host"] for rule in ingress["spec"]["rules"]} <= tls_hosts, "a host without TLS"


def check_node(docs: Docs) -> None:
    node = container(docs)
    env = {item["name"]: item for item in node.get("env", [])}
    assert env["NODE_NAME"].get("valueFrom") == {"fieldRef": {"fieldPath": "metadata.name"}}, (
        "NODE_NAME must be the pod's name: unique among running nodes"
    )
    command = node["command"] + node.get("args", [])
    assert command[0].endswith("daphne") and command[-1] == "project.asgi:application"
    assert "--proxy-headers" in command, "client addresses would all be the ingress'"
    timeout_at = command.index("--websocket_timeout")
    assert command[timeout_at + 1] == "-1", "daphne would close sockets with 1000 after a day"
    endpoint = dict(part.split("=", 1) for part in command[command.index("-e") + 1].split(":")[1:])
    assert int(endpoint["port"]) in {p["containerPort"] for p in node["ports"]}
    assert endpoint.get("interface") in ("0.0.0.0", "::"), "the ingress reaches the pod's address"
    resources = node["resources"]
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(part, {})), f"resources.{part}"


def check_non_root(docs: Docs) -> None:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    node = container(docs)
    pod_context, context = pod.get("securityContext", {}), node.get("securityContext", {})
    assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True
    assert context.get("runAsUser", pod_context.get("runAsUser", 1)) != 0
    assert context.get("allowPrivilegeEscalation") is False


def check_settings(docs: Docs) -> None:
    data = config_map(docs)
    unknown = set(data) - set(BY_NAME)
    assert not unknown, f"not settings of project/config.py: {sorted(unknown)}"
    secret = secret_example()["stringData"]
    assert not set(secret) - set(BY_NAME), "the example Secret names unknown settings"
    assert not {"SECRET_KEY", "DATABASE_URL", "REDIS_URL"} - set(secret)
    # Set by the Deployment from the pod's name; a value here would be ignored or clash.
    assert "NODE_NAME" not in data and "NODE_NAME" not in secret
    real = {**secret, "SECRET_KEY": "k" * 60}
    try:
        config = load({**data, **real})
    except ConfigError as exc:
        raise AssertionError(f"a node would not start with this ConfigMap: {exc}") from None
    assert not config["DEBUG"], "DEBUG on in a cluster"
    # The example's placeholder is the one a node refuses: copied as is, it cannot run.
    assert secret["SECRET_KEY"] == EXAMPLE_SECRET_KEY
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        load({**data, **secret})


CHECKS: dict[str, Callable[[Docs], None]] = {
    "schemas": check_schemas,
    "probes": check_probes,
    "stop_sequence": check_stop_sequence,
    "labels_and_names": check_labels_and_names,
    "ingress": check_ingress,
    "node": check_node,
    "non_root": check_non_root,
    "settings": check_settings,
}


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("check", list(CHECKS))
def test_rendered_manifests(rendered: Docs, check: str) -> None:
    CHECKS[check](rendered)


def test_the_example_secret_is_valid_and_outside_the_kustomization() -> None:
    check_schemas([secret_example()])
    kustomization = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert SECRET_EXAMPLE.name not in kustomization["resources"]


def test_the_overlay_pins_an_image_and_keeps_the_base_probes(base: Docs) -> None:
    production = render("overlays/production")
    image = container(production)["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
    assert image != container(base)["image"]
    assert one(production, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2
    assert {doc["metadata"].get("namespace") for doc in production} == {"tether"}
    for field in ("readinessProbe", "livenessProbe", "lifecycle", "command"):
        assert container(production)[field] == container(base)[field], field


def _set(path: str, value: Any) -> Callable[[Docs], None]:
    """A breakage: set the dotted `Kind.path` (list indexes as numbers) to value,
    or delete it when value is DELETE."""

    def apply(docs: Docs) -> None:
        kind, *keys = path.split(".")
        target: Any = one(docs, kind)
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys[-1]
        if value is DELETE:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return apply


def _lower_read_timeout(docs: Docs) -> None:
    # Annotation names hold dots, which _set's paths cannot spell.
    annotations = one(docs, "Ingress")["metadata"]["annotations"]
    annotations[TIMEOUT_ANNOTATIONS[0]] = str(HEARTBEAT_INTERVAL)


DELETE = object()
POD = "Deployment.spec.template.spec"
NODE = f"{POD}.containers.0"
BREAKAGES: dict[str, tuple[str, Callable[[Docs], None]]] = {
    "unknown field": ("schemas", _set(f"{NODE}.readinesProbe", {})),
    "wrong type": ("schemas", _set(f"{POD}.terminationGracePeriodSeconds", "45")),
    "unknown apiVersion": ("schemas", _set("PodDisruptionBudget.apiVersion", "policy/v2")),
    "readiness on /health/": ("probes", _set(f"{NODE}.readinessProbe.httpGet.path", "/health/")),
    "liveness on /ready/": ("probes", _set(f"{NODE}.livenessProbe.httpGet.path", "/ready/")),
    "probe Host refused": ("probes", _set(f"{NODE}.readinessProbe.httpGet.httpHeaders", [])),
    "no preStop": ("stop_sequence", _set(f"{NODE}.lifecycle", DELETE)),
    "short grace": ("stop_sequence", _set(f"{POD}.terminationGracePeriodSeconds", 20)),
    "PDB selects nothing": (
        "labels_and_names",
        _set("PodDisruptionBudget.spec.selector.matchLabels", {"app.kubernetes.io/name": "x"}),
    ),
    "HPA scales another": (
        "labels_and_names",
        _set("HorizontalPodAutoscaler.spec.scaleTargetRef.name", "other"),
    ),
    "replicas set": ("labels_and_names", _set("Deployment.spec.replicas", 3)),
    "Service selects nothing": (
        "labels_and_names",
        _set("Service.spec.selector", {"app.kubernetes.io/name": "x"}),
    ),
    "Service port astray": ("labels_and_names", _set("Service.spec.ports.0.targetPort", 9000)),
    "/ws/ unrouted": ("ingress", _set("Ingress.spec.rules.0.http.paths.0.path", "/api/")),
    "NODE_NAME from the host": (
        "node",
        _set(f"{NODE}.env.0.valueFrom.fieldRef.fieldPath", "spec.nodeName"),
    ),
    "no --proxy-headers": ("node", _set(f"{NODE}.command.5", "--verbosity")),
    "root": ("non_root", _set(f"{POD}.securityContext.runAsNonRoot", False)),
    "DEBUG on": ("settings", _set("ConfigMap.data.DEBUG", "on")),
    "read timeout at the heartbeat": ("ingress", _lower_read_timeout),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_property_is_caught(base: Docs, breakage: str) -> None:
    check, breaking = BREAKAGES[breakage]
    docs = copy.deepcopy(base)
    CHECKS[check](docs)  # whole, it passes
    breaking(docs)
    with pytest.raises(AssertionError):
        CHECKS[check](docs)


def test_the_deployment_guide_names_every_base_file() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for path in sorted((MANIFESTS / "base").glob("*.yaml")):
        assert f"`base/{path.name}`" in guide, f"docs/deployment.md does not list {path.name}"
