"""Kubernetes manifests under deploy/k8s: kustomize wiring, per-service contract with the runtime, hardening."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

from gateway.render import GatewayConfig
from llmlab.runtime import SERVICES, ServiceSettings, load_settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
PORT = 50051
SECRET = "llmlab-datastores"


def load_docs(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomizations() -> list[pathlib.Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def base_objects(name: str) -> dict[str, dict]:
    """Objects of base/<name>.yaml by kind (each kind once)."""
    docs = load_docs(BASE / f"{name}.yaml")
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), f"{name}.yaml repeats a kind: {kinds}"
    return {d["kind"]: d for d in docs}


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def prestop_sleep(c: dict) -> int:
    command = " ".join(c["lifecycle"]["preStop"]["exec"]["command"])
    m = re.search(r"sleep\W+(\d+)", command)
    assert m, f"preStop does not wait: {command!r}"
    return int(m.group(1))


def quantity(value: str | int) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert m and m.group(2) in {"", *units}, f"bad quantity {value!r}"
    return float(m.group(1)) * units.get(m.group(2), 1)


def assert_hardened(deployment: dict) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod.get("automountServiceAccountToken") is False
    c = container(deployment)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    res = c["resources"]
    for kind in ("cpu", "memory"):
        assert quantity(res["requests"][kind]) <= quantity(res["limits"][kind]), kind


# --- every file, every kustomization ----------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(K8S.rglob("*.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_parses_and_names_its_objects(path):
    docs = load_docs(path)
    assert docs, f"{path} is empty"
    for d in docs:
        assert isinstance(d, dict) and d.get("apiVersion") and d.get("kind"), path
        if path.name != "kustomization.yaml":
            assert d["metadata"]["name"], path


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.parent.relative_to(K8S)))
def test_kustomization_references_exist_and_cover_the_folder(path):
    k = load_docs(path)[0]
    here = path.parent
    referenced = set()
    for entry in k.get("resources", []):
        target = (here / entry).resolve()
        assert target.exists(), f"{path}: missing resource {entry}"
        if target.is_dir():
            assert load_docs(target / "kustomization.yaml")[0]["kind"] == "Kustomization", entry
        referenced.add(target)
    for entry in k.get("components", []):
        target = (here / entry).resolve()
        assert (target / "kustomization.yaml").is_file(), f"{path}: missing component {entry}"
        assert load_docs(target / "kustomization.yaml")[0]["kind"] == "Component", entry
    for patch in k.get("patches", []):
        assert "path" in patch or "patch" in patch, patch
        if "path" in patch:
            assert (here / patch["path"]).is_file(), f"{path}: missing patch {patch['path']}"
            referenced.add((here / patch["path"]).resolve())
    orphans = {p.resolve() for p in here.glob("*.yaml") if p.name != "kustomization.yaml"} - referenced
    assert not orphans, f"{path} does not use {sorted(map(str, orphans))}"


def test_no_rendered_envoy_config_is_committed():
    for path in K8S.rglob("*.yaml"):
        assert "static_resources" not in path.read_text(), f"{path}: the gateway config comes from the image"


def test_base_namespace_matches_the_gateways_upstreams():
    k = load_docs(BASE / "kustomization.yaml")[0]
    namespaces = [d for p in BASE.glob("*.yaml") for d in load_docs(p) if d["kind"] == "Namespace"]
    assert [n["metadata"]["name"] for n in namespaces] == [k["namespace"]] == ["llmlab"]
    upstreams = GatewayConfig(mode="kubernetes", namespace=k["namespace"]).upstreams
    for svc in SERVICES:
        service = base_objects(svc)["Service"]
        assert upstreams[svc] == f"{service['metadata']['name']}.{k['namespace']}.svc.cluster.local:{PORT}"


# --- the six services --------------------------------------------------------------------------------------


@pytest.mark.parametrize("svc", SERVICES)
def test_service_has_deployment_service_and_account(svc):
    objs = base_objects(svc)
    assert {"Deployment", "Service", "ServiceAccount"} <= set(objs)
    assert all(o["metadata"]["name"] == svc for o in objs.values())
    dep, service = objs["Deployment"], objs["Service"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == svc
    assert objs["ServiceAccount"].get("automountServiceAccountToken") is False
    if "PodDisruptionBudget" in objs:
        assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()

    c = container(dep)
    assert c["image"].split(":")[0] == "llmlab", "one image for all six services"
    assert c["args"] == [svc]
    assert {"name": "grpc", "containerPort": PORT} in c["ports"]
    # Headless: the gateway's STRICT_DNS cluster resolves every ready pod.
    assert service["spec"].get("clusterIP") == "None"
    [port] = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("grpc", PORT, "grpc")


@pytest.mark.parametrize("svc", SERVICES)
def test_service_probes_are_native_grpc(svc):
    c = container(base_objects(svc)["Deployment"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": PORT}, probe


@pytest.mark.parametrize("svc", SERVICES)
def test_service_is_hardened_and_sized(svc):
    assert_hardened(base_objects(svc)["Deployment"])


@pytest.mark.parametrize("svc", SERVICES)
def test_service_env_is_what_the_runtime_reads(svc, monkeypatch):
    c = container(base_objects(svc)["Deployment"])
    env = env_of(c)
    up = svc.upper()
    for var, key in (("LLMLAB_DATABASE_URL", "database-url"), ("LLMLAB_REDIS_URL", "redis-url")):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": key}, var
    peers = [p for p in SERVICES if p != svc]
    for peer in peers:
        assert env[f"LLMLAB_{peer.upper()}_TARGET"]["value"] == f"{peer}:{PORT}"
    # Every LLMLAB_ variable is a peer target or a settings field (shared or with this service's prefix).
    spec = importlib.import_module(f"services.{svc}.app").SPEC
    fields = {f.name for f in dataclasses.fields(spec.settings_cls)}
    for name in env:
        if name.endswith("_TARGET"):
            assert name.removeprefix("LLMLAB_").removesuffix("_TARGET").lower() in peers, name
            continue
        field = name.removeprefix(f"LLMLAB_{up}_").removeprefix("LLMLAB_").lower()
        assert field in fields, f"{name} is not a setting"

    plain = {n: e["value"] for n, e in env.items() if "value" in e}
    plain["LLMLAB_DATABASE_URL"] = "postgresql://llmlab@db.example:5432/llmlab"
    plain["LLMLAB_REDIS_URL"] = "rediss://cache.example:6379/0"
    settings = load_settings(spec.settings_cls, svc, environ=plain)
    assert (settings.host, settings.port, settings.log_format) == ("0.0.0.0", PORT, "json")
    for name, value in plain.items():
        if name.endswith("_TARGET"):
            monkeypatch.setenv(name, value)
    for peer in peers:
        assert settings.peer_target(peer) == f"{peer}:{PORT}"


@pytest.mark.parametrize("svc", SERVICES)
def test_termination_grace_covers_prestop_and_shutdown_grace(svc):
    dep = base_objects(svc)["Deployment"]
    c = container(dep)
    raw = env_of(c).get("LLMLAB_SHUTDOWN_GRACE_SECONDS", {}).get("value")
    grace = float(raw) if raw is not None else ServiceSettings.shutdown_grace_seconds
    total = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert total > grace
    assert total > prestop_sleep(c) + grace, "SIGTERM comes after preStop, inside the same grace period"


# --- the gateway -------------------------------------------------------------------------------------------


def test_gateway_deployment_service_and_budget():
    objs = base_objects("gateway")
    assert {"Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"} <= set(objs)
    dep, service, pdb = objs["Deployment"], objs["Service"], objs["PodDisruptionBudget"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["replicas"] == 2
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    budget, replicas = pdb["spec"], dep["spec"]["replicas"]
    available = budget["minAvailable"] if "minAvailable" in budget else replicas - budget["maxUnavailable"]
    assert available >= 1, "a drain must leave a gateway up"
    assert service["spec"]["type"] == "ClusterIP"
    [port] = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 8080, "http")

    c = container(dep)
    assert {"name": "http", "containerPort": 8080} in c["ports"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "/healthz" not in json.dumps(c["livenessProbe"]), "an upstream outage must not restart the gateway"
    assert not c.get("volumeMounts") or all(v["mountPath"] == "/tmp" for v in c["volumeMounts"])
    assert_hardened(dep)
    args = c["args"]
    drain = float(args[args.index("--drain-time-s") + 1])
    assert prestop_sleep(c) > drain
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > prestop_sleep(c)
    assert "-c" not in args, "the config path is the image's"


def test_gateway_image_serves_the_config_it_rendered():
    text = (DEPLOY / "Dockerfile.gateway").read_text()
    render = re.search(r"gateway/render\.py (.*?)(?:&&|$)", text.replace("\\\n", " "), re.S)
    assert render, "the gateway config is rendered at build time"
    flags = render.group(1).split()
    assert flags[flags.index("--mode") + 1] == "kubernetes"
    asset_dir, out = flags[flags.index("--asset-dir") + 1], flags[flags.index("--out") + 1]
    assert re.search(rf"cp gen/llmlab\.binpb gateway/errors\.lua {re.escape(asset_dir)}/?\s", text)
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1))
    assert entrypoint[entrypoint.index("-c") + 1] == out
    assert "--mode validate" in text
    assert re.search(r"^USER 10001", text, re.M)


def test_service_image_generates_protos_and_runs_as_non_root():
    text = (DEPLOY / "Dockerfile").read_text()
    assert text.startswith("#") and re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "python scripts/gen_protos.py" in text
    assert re.search(r"^ENV .*PYTHONPATH=/app/gen:/app/libs:/app", text, re.M | re.S)
    assert re.search(r"^USER 10001", text, re.M)
    assert "services.${1:-${LLMLAB_SERVICE" in text


# --- components and overlays -------------------------------------------------------------------------------


def component(name: str) -> tuple[dict, list[dict]]:
    here = K8S / "components" / name
    k = load_docs(here / "kustomization.yaml")[0]
    docs = [d for entry in k.get("resources", []) for d in load_docs(here / entry)]
    docs += [d for p in k.get("patches", []) if "path" in p for d in load_docs(here / p["path"])]
    return k, docs


def test_gpu_inference_component():
    _, docs = component("gpu-inference")
    [dep] = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["metadata"]["name"] == "inference"
    pod = dep["spec"]["template"]["spec"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    [c] = pod["containers"]
    assert c["name"] == container(base_objects("inference")["Deployment"])["name"]
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert env_of(c)["LLMLAB_INFERENCE_DEVICE"]["value"] == "cuda"


def test_hpa_component_scales_gateway_inference_experiments():
    k, docs = component("hpa")
    hpas = {d["metadata"]["name"]: d for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    assert set(hpas) == {"gateway", "inference", "experiments"}
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["metadata"]["namespace"] == "llmlab", "components come after the base's namespace transformer"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "Deployment" in base_objects(name)
    unset = {p["target"]["name"] for p in k["patches"] if "/spec/replicas" in p.get("patch", "")}
    assert unset == set(hpas)


def test_loadbalancer_component_fronts_the_gateway():
    _, docs = component("loadbalancer")
    [svc] = [d for d in docs if d["kind"] == "Service"]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["metadata"]["namespace"] == "llmlab"
    labels = base_objects("gateway")["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"http"}


def test_local_overlay_runs_one_replica_of_everything_with_a_datastore_secret():
    k = load_docs(K8S / "overlays" / "local" / "kustomization.yaml")[0]
    assert "../../base" in k["resources"]
    counts = {r["name"]: r["count"] for r in k["replicas"]}
    assert counts == dict.fromkeys([*SERVICES, "gateway"], 1)
    [secret] = [s for s in k["secretGenerator"] if s["name"] == SECRET]
    keys = {lit.partition("=")[0] for lit in secret["literals"]}
    assert keys == {"database-url", "redis-url"}


# --- rendered with kustomize, where kubectl is installed ---------------------------------------------------


def kubectl_with_components() -> str:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True)
    version = json.loads(out.stdout or "{}").get("kustomizeVersion", "")
    m = re.match(r"v(\d+)", version)
    if not m or int(m.group(1)) < 4:
        pytest.skip(f"kubectl's kustomize {version or '?'} predates components")
    return kubectl


def kustomize(kubectl: str, directory: pathlib.Path) -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("directory", [BASE, K8S / "overlays" / "local"], ids=["base", "local"])
def test_kustomize_renders(directory):
    docs = kustomize(kubectl_with_components(), directory)
    deployments = by_kind(docs, "Deployment")
    assert set(SERVICES) | {"gateway"} <= set(deployments)
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "llmlab", d["metadata"]["name"]
    secrets = set(by_kind(docs, "Secret"))
    for name in SERVICES:
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container(deployments[name])["env"]
                if "valueFrom" in e and not e["valueFrom"]["secretKeyRef"].get("optional")}
        assert len(refs) == 1
        if secrets:  # the local overlay generates it (with a hash suffix that kustomize must carry over)
            assert refs <= secrets


def test_kustomize_renders_base_with_every_component(tmp_path):
    kubectl = kubectl_with_components()
    # kustomize refuses absolute paths
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(BASE, tmp_path)],
        "components": [os.path.relpath(p, tmp_path) for p in sorted((K8S / "components").iterdir())],
    }))
    docs = kustomize(kubectl, tmp_path)
    assert all(d["metadata"].get("namespace") == "llmlab" for d in docs if d["kind"] != "Namespace")
    deployments = by_kind(docs, "Deployment")
    for name in by_kind(docs, "HorizontalPodAutoscaler"):
        assert "replicas" not in deployments[name]["spec"]
    inference = container(deployments["inference"])
    assert inference["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert quantity(inference["resources"]["limits"]["memory"]) > 0, "the GPU patch keeps the base's resources"
    assert inference["readinessProbe"]["grpc"] == {"port": PORT}
    assert by_kind(docs, "Service")["gateway-external"]["spec"]["type"] == "LoadBalancer"


# --- the sweep workers (docs/sweeps.md) ---------------------------------------------------------------------


def test_experiments_worker_runs_the_worker_with_the_service_s_settings_and_scales_on_the_sweep_queues():
    from services.experiments import sweeps
    from services.experiments.settings import ExperimentsSettings

    objs = base_objects("experiments-worker")
    assert {"Deployment", "ServiceAccount", "PodDisruptionBudget", "ScaledObject"} <= set(objs)
    dep = objs["Deployment"]
    assert_hardened(dep)
    c = container(dep)
    assert c["args"] == ["experiments.worker"] and c["startupProbe"]["grpc"] == {"port": PORT}
    env = env_of(c)
    for var, key in (("LLMLAB_DATABASE_URL", "database-url"), ("LLMLAB_REDIS_URL", "redis-url")):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": SECRET, "key": key}, var
    fields = {f.name for f in dataclasses.fields(ExperimentsSettings)}
    for name in env:
        if name.startswith("LLMLAB_") and not name.endswith(("_TARGET", "_WORKER_PORT")):
            assert name.removeprefix("LLMLAB_EXPERIMENTS_").removeprefix("LLMLAB_").lower() in fields, name
    assert env["LLMLAB_EXPERIMENTS_WORKER_PORT"]["value"] == str(PORT)
    assert {env[f"LLMLAB_{p}_TARGET"]["value"] for p in ("INFERENCE", "METRICS")} == {"inference:50051",
                                                                                    "metrics:50051"}
    plain = {n: e["value"] for n, e in env.items() if "value" in e and n.startswith("LLMLAB_")}
    load_settings(ExperimentsSettings, "experiments", environ=plain)  # every value parses

    scaled = objs["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] >= 1  # delivered (pending) items always have a worker to finish them
    prefix = ServiceSettings.redis_prefix
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [f"{prefix}:stream:{sweeps.queue_name(p)}"
                                                           for p in sweeps.PRIORITIES]
    for t in triggers:
        assert t["type"] == "redis-streams" and t["metadata"]["consumerGroup"] == sweeps.GROUP
        assert int(t["metadata"]["lagCount"]) > 0 and t["metadata"]["addressFromEnv"] in env


def test_inference_worker_runs_the_batch_queue_with_the_inference_settings():
    objs = base_objects("inference-worker")
    assert {"Deployment", "ServiceAccount", "PodDisruptionBudget"} <= set(objs) and "Service" not in objs
    c = container(objs["Deployment"])
    assert c["args"] == ["inference.worker"] and c["startupProbe"]["grpc"]["port"] == PORT
    env = env_of(c)
    assert env["LLMLAB_INFERENCE_WORKER_PORT"]["value"] == str(PORT)
    assert env["LLMLAB_INFERENCE_TARGET"]["value"] == f"inference:{PORT}"
    assert env["LLMLAB_FILES_TARGET"]["value"] == f"files:{PORT}"
    from services.inference.settings import InferenceSettings

    fields = {f.name for f in dataclasses.fields(InferenceSettings)}
    for name in env:
        if name.endswith("_TARGET") or name == "LLMLAB_INFERENCE_WORKER_PORT":
            continue
        assert name.removeprefix("LLMLAB_INFERENCE_").removeprefix("LLMLAB_").lower() in fields, name
    assert "inference-worker.yaml" in load_docs(BASE / "kustomization.yaml")[0]["resources"]
    from llmlab.devstack.launcher import WORKERS

    assert WORKERS["inference-worker"][0] == "services.inference.worker"


def test_keda_component_scales_the_inference_worker_on_its_queue():
    from llmlab.runtime.streams import stream_key
    from services.inference.batches.jobs import GROUP, QUEUE

    k, docs = component("keda-batches")
    [scaled] = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "inference-worker"
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == stream_key("llmlab", QUEUE)
    assert trigger["metadata"]["consumerGroup"] == GROUP
    [auth] = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert all(ref["name"] == SECRET for ref in auth["spec"]["secretTargetRef"])
    unset = {p["target"]["name"] for p in k["patches"] if "/spec/replicas" in p.get("patch", "")}
    assert unset == {"inference-worker"}
