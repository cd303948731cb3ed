"""The Kubernetes manifests in k8s/, checked offline: every document against the bundled
Kubernetes schemas (kubernetes-validate, strict: an unknown field is an error), and each
container's command line against meterwax's own parser, so a manifest cannot name a flag or a
probe path that does not exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from litestar.testing import TestClient

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
