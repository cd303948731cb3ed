"""The Kubernetes manifests in k8s/, checked offline: every document against the bundled
Kubernetes schemas (kubernetes-validate, strict: an unknown field is an error), and each
container's command line against meterwax's own parser, so a manifest cannot name a flag or a
probe path that does not exist; and the stream's StatefulSet, scaled to N, as the environment
each pod gets, read by meterwax's own settings into one Bytewax cluster of N processes."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from litestar.testing import TestClient

from flows.settings import SettingsError, StreamSettings
from meterwax.api.app import create_app
from meterwax.api.backends import FolderBackend
from meterwax.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "k8s").glob("*.yaml"))
# The oldest Kubernetes release still supported upstream when this was written; the manifests
# use nothing newer.
KUBERNETES = "1.30.0"


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", []))


def test_there_are_manifests_for_the_stream_and_the_api() -> None:
    kinds = {name.split(":")[1] for name, _ in documents()}
    assert {"StatefulSet/meterwax", "ConfigMap/meterwax", "Deployment/meterwax-api",
            "Service/meterwax-api"} <= kinds


@pytest.mark.parametrize(("name", "doc"), documents(), ids=[n for n, _ in documents()])
def test_each_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize(("name", "doc"), documents(), ids=[n for n, _ in documents()])
def test_each_container_command_line_is_one_meterwax_takes(name: str,
                                                           doc: dict[str, Any]) -> None:
    for container in containers(doc):
        args = container.get("args", [])
        _parser().parse_args(args)  # exits (SystemExit) on a flag meterwax does not know


def test_the_api_probes_answer_on_the_routes_the_app_serves(tmp_path: Path) -> None:
    api = next(doc for name, doc in documents() if name.endswith("Deployment/meterwax-api"))
    (container,) = containers(api)
    paths = {container[p]["httpGet"]["path"]
             for p in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert paths == {"/healthz", "/readyz"}
    port = container["ports"][0]["containerPort"]
    assert f"{port}" in container["args"]
    assert "0.0.0.0" in container["args"]  # reachable by the kubelet and the Service
    with TestClient(create_app(FolderBackend(tmp_path))) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503  # nothing to serve: not ready
    service = next(doc for name, doc in documents() if name.endswith("Service/meterwax-api"))
    assert service["spec"]["selector"] == api["spec"]["template"]["metadata"]["labels"]
    assert container["resources"]["requests"]["cpu"]


# -- the stream's StatefulSet as one Bytewax cluster ------------------------------------------

NAMESPACE = "billing"
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _doc(suffix: str) -> dict[str, Any]:
    return next(doc for name, doc in documents() if name.endswith(suffix))


def pod_environment(stateful_set: dict[str, Any], config_map: dict[str, Any],
                    ordinal: int) -> dict[str, str]:
    """The environment Kubernetes gives pod `ordinal`: the ConfigMap, then `env` in order with
    its downward-API fields filled in and $(VAR) references to earlier entries expanded."""
    (container,) = containers(stateful_set)
    pod = f"{stateful_set['metadata']['name']}-{ordinal}"
    fields = {"metadata.namespace": NAMESPACE, "metadata.name": pod,
              "metadata.labels['apps.kubernetes.io/pod-index']": str(ordinal)}
    env = {"HOSTNAME": pod}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == config_map["metadata"]["name"]
        env.update(config_map["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = _REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)),
                                                entry["value"])
        elif "fieldRef" in entry["valueFrom"]:
            env[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:  # a Secret: any well-formed value does
            env[entry["name"]] = "redis://redis:6379/0"
    return env


def scaled(replicas: int) -> dict[str, Any]:
    """The StatefulSet as an operator sets it for `replicas` pods: both counts changed."""
    stateful_set = copy.deepcopy(_doc("StatefulSet/meterwax"))
    stateful_set["spec"]["replicas"] = replicas
    (container,) = containers(stateful_set)
    for entry in container["env"]:
        if entry["name"] == "METERWAX_CLUSTER_REPLICAS":
            entry["value"] = str(replicas)
    return stateful_set


def test_a_headless_service_names_every_stream_pod() -> None:
    service, stateful_set = _doc("Service/meterwax"), _doc("StatefulSet/meterwax")
    assert stateful_set["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True  # peers dial before ready
    labels = stateful_set["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert stateful_set["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = containers(stateful_set)
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "cluster": "cluster", "metrics": "metrics"}
    cluster_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "cluster")
    assert container_ports["cluster"] == cluster_port
    env = pod_environment(stateful_set, _doc("ConfigMap/meterwax"), 0)
    assert env["METERWAX_CLUSTER_PORT"] == str(cluster_port)
    assert env["METERWAX_CLUSTER_REPLICAS"] == str(stateful_set["spec"]["replicas"])


def test_each_pod_keeps_its_own_recovery_volume() -> None:
    stateful_set = _doc("StatefulSet/meterwax")
    (claim,) = stateful_set["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]  # one pod's, never shared
    (container,) = containers(stateful_set)
    (mount,) = container["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    recovery = pod_environment(stateful_set, _doc("ConfigMap/meterwax"), 0)[
        "METERWAX_RECOVERY_DIR"]
    assert Path(recovery).is_relative_to(mount["mountPath"])


@pytest.mark.parametrize("replicas", [1, 2, 3, 5])
def test_replicas_n_is_one_bytewax_cluster_of_n_processes(replicas: int) -> None:
    stateful_set, config_map = scaled(replicas), _doc("ConfigMap/meterwax")
    kubernetes_validate.validate(stateful_set, KUBERNETES, strict=True)
    (container,) = containers(stateful_set)
    service = stateful_set["spec"]["serviceName"]
    cluster_port = next(p["containerPort"] for p in container["ports"]
                        if p["name"] == "cluster")
    # Every peer's DNS record under the headless Service, in ordinal order.
    expected = tuple(f"meterwax-{i}.{service}.{NAMESPACE}.svc.cluster.local:{cluster_port}"
                     for i in range(replicas))
    for ordinal in range(replicas):
        args = vars(_parser().parse_args(container["args"]))
        got = StreamSettings.from_mapping(
            args, environ=pod_environment(stateful_set, config_map, ordinal))
        if replicas == 1:  # a standalone process, as before: no cluster to form
            assert (got.addresses, got.process_id) == ((), None)
        else:
            assert (got.addresses, got.process_id) == (expected, ordinal)
            host = got.addresses[got.process_id].rpartition(":")[0]
            assert host.startswith(f"meterwax-{ordinal}.")  # binds its own pod's name


def test_a_pod_beyond_the_configured_replicas_is_refused() -> None:
    # spec.replicas raised without METERWAX_CLUSTER_REPLICAS: the new pod must not start as a
    # process its peers do not expect.
    stateful_set = scaled(2)
    env = pod_environment(stateful_set, _doc("ConfigMap/meterwax"), 2)
    with pytest.raises(SettingsError) as err:
        StreamSettings.from_mapping(vars(_parser().parse_args(["stream"])), environ=env)
    assert err.value.problems == [
        "cluster_replicas: 2, but this is pod ordinal 2 (a cluster of 2 has ordinals 0..1): it "
        "must equal the StatefulSet's spec.replicas"]
