#!/usr/bin/env python3
"""Validates deploy/kubernetes offline (no cluster, no kubectl): every file the
kustomization lists parses; every object has apiVersion, kind and a name; each
Deployment's selector matches its pod labels, its containers have resource
requests and liveness and readiness probes on declared ports; every Service,
PodDisruptionBudget, HPA and ScaledObject points at something that exists; every
environment variable the manifests give a binary is one of its flags' variables
(read from `--help` of the built binaries); and the ScaledObject's query uses
the worker's scaling metrics."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "deploy" / "kubernetes"


def fail(message: str) -> None:
    print(f"check-kubernetes: {message}", file=sys.stderr)
    sys.exit(1)


def documents() -> list[dict]:
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((FOLDER / resource).read_text()):
            if doc is None:
                continue
            for field in ("apiVersion", "kind", "metadata"):
                if field not in doc:
                    fail(f"{resource}: an object without {field}")
            if not doc["metadata"].get("name"):
                fail(f"{resource}: a {doc['kind']} without a name")
            objects.append(doc)
    return objects


def env_names(binary: str) -> set[str]:
    """The environment variables `binary --help` names (`[env: NAME=...]`)."""
    path = ROOT / "target" / "debug" / binary
    if not path.exists():
        path = ROOT / "target" / "release" / binary
    if not path.exists():
        fail(f"build the {binary} binary first (cargo build): its --help lists the variables")
    text = subprocess.run([str(path), "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", text))


def main() -> None:
    objects = documents()
    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    deployments = by_kind.get("Deployment", {})
    for wanted in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject"):
        if wanted not in by_kind:
            fail(f"no {wanted} in deploy/kubernetes")
    binaries = {"gateway": env_names("gateway"), "worker": env_names("worker")}
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        selector = spec["selector"]["matchLabels"]
        labels = spec["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in selector.items()):
            fail(f"Deployment {name}: its selector {selector} does not match its pod labels")
        for container in spec["template"]["spec"]["containers"]:
            where = f"Deployment {name}, container {container['name']}"
            if not container.get("resources", {}).get("requests"):
                fail(f"{where}: no resource requests")
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    fail(f"{where}: no {probe}")
                port = container[probe].get("httpGet", {}).get("port")
                if port is not None and port not in ports:
                    fail(f"{where}: {probe} uses port {port!r}, which it does not declare")
            known = binaries.get(container["name"])
            if known is not None:
                for variable in container.get("env", []):
                    if variable["name"] not in known:
                        fail(f"{where}: {variable['name']} is not a variable of {container['name']} --help")
    for name, service in by_kind["Service"].items():
        selector = service["spec"]["selector"]
        if not any(
            all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
            for d in deployments.values()
        ):
            fail(f"Service {name} selects no Deployment's pods")
    for name, pdb in by_kind["PodDisruptionBudget"].items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        if not any(d["spec"]["selector"]["matchLabels"] == selector for d in deployments.values()):
            fail(f"PodDisruptionBudget {name} selects no Deployment")
    for name, hpa in by_kind["HorizontalPodAutoscaler"].items():
        if hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
            fail(f"HorizontalPodAutoscaler {name} scales a Deployment that does not exist")
    for name, scaled in by_kind["ScaledObject"].items():
        if scaled["spec"]["scaleTargetRef"]["name"] not in deployments:
            fail(f"ScaledObject {name} scales a Deployment that does not exist")
        query = scaled["spec"]["triggers"][0]["metadata"]["query"]
        for metric in ("worker_requests_in_flight", "worker_requests_waiting"):
            if metric not in query:
                fail(f"ScaledObject {name}: its query does not use {metric}")
    print(f"check-kubernetes: {len(objects)} objects in deploy/kubernetes are consistent")


if __name__ == "__main__":
    main()
