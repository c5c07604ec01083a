"""deploy/k8s against the Kubernetes schemas (kubernetes-validate, strict, offline), deploy/kserve
structurally (its CRDs are not in those schemas: containers and pod fields are checked against the
core schemas, the KServe fields against a small schema here), and the promises between them: probes on
the v2 health endpoints, a grace period longer than the drain, bundles from a volume, a GPU pool."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from deploy_helpers import REPO, k8s_manifests, kserve_manifests, settings_fields, yaml_documents
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
from referencing import Registry, Resource

# The oldest Kubernetes these manifests claim (autoscaling/v2, policy/v1, PDB unhealthyPodEvictionPolicy)
# and the newest kubernetes-validate knows: a removed or renamed field fails one of them.
VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version() + ".0")
DEFAULT_DRAIN_S = 20.0  # service/settings.py drain_timeout_s

K8S = [(path, doc) for path in k8s_manifests() for doc in yaml_documents(path)]
KSERVE = [(path, doc) for path in kserve_manifests() for doc in yaml_documents(path)]


def _id(item: tuple[Path, dict[str, Any]]) -> str:
    path, doc = item
    return f"{path.relative_to(REPO / 'deploy')}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in K8S if doc["kind"] == kind]


def test_there_is_something_to_check() -> None:
    kinds = {doc["kind"] for _, doc in K8S}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    assert {doc["kind"] for _, doc in KSERVE} == {"ServingRuntime", "InferenceService"}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("item", K8S, ids=[_id(i) for i in K8S])
def test_k8s_manifest_is_valid(item: tuple[Path, dict[str, Any]], version: str) -> None:
    _, doc = item
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except SchemaNotFoundError as e:  # a CRD in deploy/k8s would need its own check, like KServe's
        pytest.fail(f"no schema: {e.message}")
    except ValidationError as e:
        pytest.fail(f"{'.'.join(map(str, e.path))}: {e.message}")


def test_strict_validation_catches_a_typo() -> None:
    deployment = json.loads(json.dumps(of_kind("Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


# --- the server's contract ------------------------------------------------------------------------


def _configmap_env() -> dict[str, str]:
    (configmap,) = of_kind("ConfigMap")
    return dict(configmap["data"])


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            assert source["configMapRef"]["name"] == of_kind("ConfigMap")[0]["metadata"]["name"]
            env.update(_configmap_env())
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def _pre_stop_seconds(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if not pre_stop:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


def _probe_port(probe: dict[str, Any], container: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(match)


def _check_server_container(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    env = _container_env(container)
    port = int(env.get("CIRCUITSERVE_PORT", "8000"))
    assert env.get("CIRCUITSERVE_HOST") == "0.0.0.0", "listen beyond loopback inside the pod"
    assert port in [p["containerPort"] for p in container["ports"]]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            assert _probe_port(container[probe], container) == port, probe
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"{kind} must name cpu and memory"
    drain = float(env.get("CIRCUITSERVE_DRAIN_TIMEOUT_S", DEFAULT_DRAIN_S))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    assert grace > drain + _pre_stop_seconds(container), (
        f"terminationGracePeriodSeconds {grace} must outlast preStop + drain ({drain} s)"
    )
    named = {k for k in env if k.startswith("CIRCUITSERVE_")}
    assert named <= settings_fields(), f"not server settings: {named - settings_fields()}"
    return env


@pytest.mark.parametrize("deployment", of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_deployment_serves_the_contract(deployment: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _check_server_container(container, pod)
    assert pod["enableServiceLinks"] is False, "a Service named circuitserve would set CIRCUITSERVE_PORT"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # Bundles come from a volume, mounted read-only where CIRCUITSERVE_BUNDLES points.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for bundle in json.loads(env["CIRCUITSERVE_BUNDLES"]):
        (mount,) = [
            m for path, m in mounts.items() if bundle == path or bundle.startswith(path.rstrip("/") + "/")
        ]
        assert mount.get("readOnly") is True
        assert "persistentVolumeClaim" in volumes[mount["name"]]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == env["CIRCUITSERVE_PORT"]


def test_gpu_variant() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    gpu = [d for d in deployments.values() if "nvidia.com/gpu" in _container(d)["resources"]["limits"]]
    cpu = [d for d in deployments.values() if d not in gpu]
    assert gpu and cpu, "a CPU and a GPU Deployment"
    for d in gpu:
        container = _container(d)
        assert container["image"].endswith("-cuda")
        assert _container_env(container)["CIRCUITSERVE_PROVIDER"] == "cuda"
    for d in cpu:
        assert _container(d)["image"].endswith("-cpu")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def test_service_hpa_and_pdb_point_at_the_deployments() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    (service,) = of_kind("Service")
    assert all(service["spec"]["selector"].items() <= labels.items() for labels in pod_labels)
    (port,) = service["spec"]["ports"]
    assert all(
        port["targetPort"] in [p.get("name") for p in _container(d)["ports"]] for d in deployments.values()
    )
    (pdb,) = of_kind("PodDisruptionBudget")
    assert all(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items() for labels in pod_labels)
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind("HorizontalPodAutoscaler")}
    assert targets == set(deployments), "one HPA per Deployment"
    for hpa in of_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["minReplicas"] >= 1 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    claims = {c["metadata"]["name"] for c in of_kind("PersistentVolumeClaim")}
    for d in deployments.values():
        for volume in d["spec"]["template"]["spec"]["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


# --- KServe -----------------------------------------------------------------------------------------

_KSERVE_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServingRuntime": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1alpha1"},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {
                "type": "object",
                "required": ["supportedModelFormats", "containers"],
                "additionalProperties": False,
                "properties": {
                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                    "supportedModelFormats": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "version": {"type": "string"},
                                "autoSelect": {"type": "boolean"},
                                "priority": {"type": "integer", "minimum": 1},
                            },
                        },
                    },
                    "protocolVersions": {
                        "type": "array",
                        "items": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
                    },
                    "multiModel": {"type": "boolean"},
                    "disabled": {"type": "boolean"},
                    "containers": {"type": "array", "minItems": 1},
                    "volumes": {"type": "array"},
                    "nodeSelector": {"type": "object"},
                    "tolerations": {"type": "array"},
                    "affinity": {"type": "object"},
                    "imagePullSecrets": {"type": "array"},
                },
            },
        },
    },
    "InferenceService": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "metadata": {"type": "object", "required": ["name"]},
            "spec": {
                "type": "object",
                "required": ["predictor"],
                "properties": {
                    "predictor": {
                        "type": "object",
                        "required": ["model"],
                        "properties": {
                            "minReplicas": {"type": "integer", "minimum": 0},
                            "maxReplicas": {"type": "integer", "minimum": 1},
                            "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
                            "scaleTarget": {"type": "integer", "minimum": 1},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                            "model": {
                                "type": "object",
                                "required": ["modelFormat", "storageUri"],
                                "properties": {
                                    "modelFormat": {
                                        "type": "object",
                                        "required": ["name"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "name": {"type": "string"},
                                            "version": {"type": "string"},
                                        },
                                    },
                                    "runtime": {"type": "string"},
                                    "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
                                    "storageUri": {"type": "string", "pattern": "^[a-z0-9]+://"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
# ComponentExtensionSpec fields (KServe) beside the inline PodSpec of a predictor.
_PREDICTOR_OWN = {
    "model", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containerConcurrency",
    "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy",
    "autoScaling", "workerSpec",
}  # fmt: skip
_MODEL_OWN = {"modelFormat", "runtime", "protocolVersion", "storageUri", "storage"}


@cache
def _core(definition: str) -> jsonschema.protocols.Validator:
    """A strict validator for one core Kubernetes definition, from kubernetes-validate's schemas."""
    base = (
        Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{VERSIONS[0]}-local-strict"
    )
    defs = json.loads((base / "_definitions.json").read_text())
    schema = {"$ref": f"{defs['$id']}#/$defs/{definition}"}
    registry: Registry = Resource.from_contents(defs) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _core_properties(definition: str) -> set[str]:
    base = (
        Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{VERSIONS[0]}-local-strict"
    )
    defs = json.loads((base / "_definitions.json").read_text())
    return set(defs["$defs"][definition]["properties"])


def test_core_validator_catches_a_typo() -> None:
    with pytest.raises(jsonschema.ValidationError):
        _core("io.k8s.api.core.v1.Container").validate({"name": "x", "imag": "y"})


@pytest.mark.parametrize("item", KSERVE, ids=[_id(i) for i in KSERVE])
def test_kserve_manifest_structure(item: tuple[Path, dict[str, Any]]) -> None:
    _, doc = item
    jsonschema.validate(doc, _KSERVE_SCHEMAS[doc["kind"]])
    _core("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta").validate(doc["metadata"])
    if doc["kind"] == "ServingRuntime":
        for container in doc["spec"]["containers"]:
            _core("io.k8s.api.core.v1.Container").validate(container)
        for toleration in doc["spec"].get("tolerations", []):
            _core("io.k8s.api.core.v1.Toleration").validate(toleration)
    else:
        predictor = doc["spec"]["predictor"]
        pod_fields = {k: v for k, v in predictor.items() if k not in _PREDICTOR_OWN}
        assert set(pod_fields) <= _core_properties("io.k8s.api.core.v1.PodSpec"), set(pod_fields)
        for toleration in predictor.get("tolerations", []):
            _core("io.k8s.api.core.v1.Toleration").validate(toleration)
        model = predictor["model"]
        container_fields = {k: v for k, v in model.items() if k not in _MODEL_OWN}
        _core("io.k8s.api.core.v1.Container").validate({"name": "kserve-container", **container_fields})


def _runtimes() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in KSERVE if d["kind"] == "ServingRuntime"}


@pytest.mark.parametrize("runtime", list(_runtimes().values()), ids=list(_runtimes()))
def test_serving_runtime_runs_our_image_as_a_v2_server(runtime: dict[str, Any]) -> None:
    spec = runtime["spec"]
    assert "v2" in spec["protocolVersions"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"].startswith("registry.example.com/circuitserve:")
    env = _check_server_container(container, {"terminationGracePeriodSeconds": 40})
    assert json.loads(env["CIRCUITSERVE_BUNDLES"]) == ["/mnt/models"], "where KServe puts storageUri"
    assert spec["annotations"]["prometheus.kserve.io/port"] == env["CIRCUITSERVE_PORT"]
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"


@pytest.mark.parametrize(
    "isvc",
    [d for _, d in KSERVE if d["kind"] == "InferenceService"],
    ids=lambda d: d["metadata"]["name"],
)
def test_inference_service_uses_our_runtime(isvc: dict[str, Any]) -> None:
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    runtime = _runtimes()[model["runtime"]]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] == "v2"
    (container,) = runtime["spec"]["containers"]
    drain = float(_container_env(container).get("CIRCUITSERVE_DRAIN_TIMEOUT_S", DEFAULT_DRAIN_S))
    assert predictor["terminationGracePeriodSeconds"] > drain
    claims = {c["metadata"]["name"] for c in of_kind("PersistentVolumeClaim")}
    if model["storageUri"].startswith("pvc://"):
        assert model["storageUri"].removeprefix("pvc://").split("/")[0] in claims
    gpu = "nvidia.com/gpu" in container["resources"]["limits"]
    assert gpu == container["image"].endswith("-cuda")


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("deployment", of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_workers_fit_the_cpu_limit(deployment: dict[str, Any]) -> None:
    """Workers are for one pod's cores (deploy/README.md, "Workers or more pods"): a number, not
    auto (which would count the node's CPUs), and workers x onnxruntime threads within the limit."""
    container = _container(deployment)
    env = _container_env(container)
    workers = env.get("CIRCUITSERVE_WORKERS", "1")
    assert workers.isdigit(), "set CIRCUITSERVE_WORKERS to the CPU limit, not auto"
    if "nvidia.com/gpu" in container["resources"]["limits"]:
        assert workers == "1", "one worker keeps a GPU fed"
        return
    cpus = _cpus(str(container["resources"]["limits"]["cpu"]))
    threads = int(env.get("CIRCUITSERVE_INTRA_OP_THREADS", "1"))
    assert int(workers) * threads <= cpus
    assert int(workers) == cpus, "one worker per CPU of the limit"
