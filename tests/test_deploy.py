"""The deployment files in deploy/: they parse, carry the fields their kinds need, agree with each
other and with the package's pins, and hold no real credentials.

Fast and offline: no cluster, no Docker daemon, no cloud API. The Ray cluster-launcher config goes
through Ray's own schema check (the one `ray up` runs); the Kubernetes manifests are checked
against a small table of required paths per kind.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())
COMPOSE = DEPLOY / "docker-compose.yaml"
LAUNCHER = DEPLOY / "cluster-launcher" / "aws-gpu.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
MLFLOW_DOCKERFILE = DEPLOY / "mlflow" / "Dockerfile"
ENV_EXAMPLE = DEPLOY / ".env.example"

PLACEHOLDER = "CHANGE-ME"
KNOWN_DEFAULT_PASSWORDS = ("password1234", "minioadmin")
CREDENTIAL_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY|auth_config", re.IGNORECASE)
MISSING = object()


# ---- loading --------------------------------------------------------------------------------------
# Parsed once per file and shared between tests: treat the documents as read-only (deep-copy first).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> tuple[Any, ...]:
    with path.open(encoding="utf-8") as f:
        return tuple(d for d in yaml.load_all(f, Loader=_Loader) if d is not None)


def load_docs(path: Path) -> list[Any]:
    return list(_parse(path))


@functools.lru_cache(maxsize=None)
def _k8s_docs() -> tuple[tuple[Path, dict], ...]:
    return tuple(
        (path, doc)
        for path in YAML_FILES
        for doc in load_docs(path)
        if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc
    )


def k8s_docs() -> list[tuple[Path, dict]]:
    """Every Kubernetes object (and Kustomization) in deploy/, with the file it came from."""
    return list(_k8s_docs())


def of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in k8s_docs() if d["kind"] == kind]


def one(kind: str, name: str) -> dict:
    found = [d for _, d in of_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def get(doc: Any, path: str) -> Any:
    """`a.b.c` lookup in nested dicts; MISSING when any step is absent."""
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def walk(node: Any, trail: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(trail, key, value) for every mapping entry, recursively."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield trail, k, v
            yield from walk(v, f"{trail}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{trail}[{i}]")


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def dockerfile_args(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S*)", path.read_text(encoding="utf-8"), re.MULTILINE))


# ---- pod templates ----------------------------------------------------------------------------
def ray_cluster_specs() -> list[tuple[str, dict]]:
    """(label, RayCluster spec) for the RayCluster and for every RayJob's rayClusterSpec."""
    specs = [(f"RayCluster/{d['metadata']['name']}", d["spec"]) for _, d in of_kind("RayCluster")]
    specs += [
        (f"RayJob/{d['metadata']['name']}", d["spec"]["rayClusterSpec"])
        for _, d in of_kind("RayJob")
        if "rayClusterSpec" in d["spec"]
    ]
    return specs


def ray_groups(spec: dict) -> list[tuple[str, dict]]:
    """(group name, group spec) for the head and every worker group."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]


def pod_templates() -> list[tuple[str, dict]]:
    """(label, pod template) of every workload in the manifests."""
    out = []
    for _, d in k8s_docs():
        kind, name = d["kind"], d.get("metadata", {}).get("name")
        if kind in {"Deployment", "StatefulSet", "Job"}:
            out.append((f"{kind}/{name}", d["spec"]["template"]))
        if kind == "RayJob" and "submitterPodTemplate" in d["spec"]:
            out.append((f"RayJob/{name} submitter", d["spec"]["submitterPodTemplate"]))
    for label, spec in ray_cluster_specs():
        for group, g in ray_groups(spec):
            out.append((f"{label} {group}", g["template"]))
    return out


def containers(template: dict) -> list[dict]:
    spec = template.get("spec", {})
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def env_map(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ---- every file parses ------------------------------------------------------------------------
def test_deploy_has_the_expected_files():
    for rel in ("Dockerfile", "README.md", "docker-compose.yaml", ".env.example",
                "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/shared-storage.yaml",
                "kuberay/secrets.example.yaml", "mlflow/mlflow.yaml", "mlflow/postgres.yaml",
                "mlflow/minio.yaml", "mlflow/minio-bucket-job.yaml", "mlflow/secrets.example.yaml",
                "mlflow/Dockerfile", "cluster-launcher/aws-gpu.yaml"):
        assert (DEPLOY / rel).is_file(), rel


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path):
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_embedded_json_and_yaml_parse():
    """Scripts and configs carried inside ConfigMaps and Secrets are valid too."""
    cm = one("ConfigMap", "minio-bucket-init")
    policy = json.loads(cm["data"]["mlflow-artifacts-policy.json"])
    assert policy == json.loads((DEPLOY / "compose" / "mlflow-artifacts-policy.json").read_text())
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::mlflow-artifacts", "arn:aws:s3:::mlflow-artifacts/*"}


# ---- required fields per kind -----------------------------------------------------------------
# A path is required; a tuple of paths means "at least one of them".
REQUIRED: dict[str, list[str | tuple[str, ...]]] = {
    "Deployment": ["metadata.name", "spec.selector.matchLabels", "spec.template.metadata.labels",
                   "spec.template.spec.containers"],
    "StatefulSet": ["metadata.name", "spec.serviceName", "spec.selector.matchLabels",
                    "spec.template.metadata.labels", "spec.template.spec.containers",
                    "spec.volumeClaimTemplates"],
    "Service": ["metadata.name", "spec.ports", "spec.selector"],
    "Secret": ["metadata.name", "type", ("stringData", "data")],
    "ConfigMap": ["metadata.name", "data"],
    "ServiceAccount": ["metadata.name"],
    "PersistentVolumeClaim": ["metadata.name", "spec.accessModes", "spec.resources.requests.storage"],
    "Job": ["metadata.name", "spec.template.spec.restartPolicy", "spec.template.spec.containers"],
    "NetworkPolicy": ["metadata.name", "spec.podSelector", "spec.policyTypes"],
    "RayCluster": ["metadata.name", "spec.rayVersion", "spec.headGroupSpec.rayStartParams",
                   "spec.headGroupSpec.template.spec.containers", "spec.workerGroupSpecs"],
    "RayJob": ["metadata.name", "spec.entrypoint", ("spec.rayClusterSpec", "spec.clusterSelector")],
    "Kustomization": ["resources"],
}
API_VERSIONS = {
    "Deployment": "apps/v1", "StatefulSet": "apps/v1", "Service": "v1", "Secret": "v1",
    "ConfigMap": "v1", "ServiceAccount": "v1", "PersistentVolumeClaim": "v1", "Job": "batch/v1",
    "NetworkPolicy": "networking.k8s.io/v1", "RayCluster": "ray.io/v1", "RayJob": "ray.io/v1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}


def test_every_manifest_kind_is_known():
    kinds = {d["kind"] for _, d in k8s_docs()}
    assert kinds <= REQUIRED.keys(), f"add the required paths of {kinds - REQUIRED.keys()}"
    assert {"Deployment", "StatefulSet", "Service", "Secret", "Job", "RayCluster", "RayJob",
            "PersistentVolumeClaim"} <= kinds


@pytest.mark.parametrize("path_doc", k8s_docs(),
                         ids=lambda pd: f"{pd[0].relative_to(DEPLOY)}:{pd[1]['kind']}/"
                                        f"{pd[1].get('metadata', {}).get('name', '')}")
def test_manifest_has_required_fields(path_doc):
    path, doc = path_doc
    kind = doc["kind"]
    assert doc["apiVersion"] == API_VERSIONS[kind], f"{path}: {kind} apiVersion {doc['apiVersion']}"
    for req in REQUIRED[kind]:
        options = req if isinstance(req, tuple) else (req,)
        values = [get(doc, p) for p in options]
        assert any(v is not MISSING and v is not None for v in values), f"{path}: {kind} lacks {req}"
    for field in ("spec.ports", "spec.template.spec.containers", "spec.workerGroupSpecs",
                  "spec.volumeClaimTemplates", "resources"):
        value = get(doc, field)
        assert value is MISSING or (isinstance(value, list) and value), f"{path}: {field} is empty"
    # Namespace-agnostic: apply with `kubectl -n NS`.
    assert "namespace" not in doc.get("metadata", {}), f"{path}: {kind} sets a namespace"


def test_selectors_match_pod_labels():
    for _, d in of_kind("Deployment") + of_kind("StatefulSet"):
        selector = d["spec"]["selector"]["matchLabels"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), f"{d['metadata']['name']}: selector not in labels"


def test_statefulsets_have_a_headless_governing_service():
    services = {d["metadata"]["name"]: d for _, d in of_kind("Service")}
    for _, d in of_kind("StatefulSet"):
        svc = services.get(d["spec"]["serviceName"])
        assert svc is not None, f"{d['metadata']['name']}: no Service {d['spec']['serviceName']}"
        assert svc["spec"].get("clusterIP") == "None"
        for claim in d["spec"]["volumeClaimTemplates"]:
            assert claim["metadata"]["name"] and claim["spec"]["resources"]["requests"]["storage"]


def test_every_service_selects_a_workload_and_its_named_ports():
    templates = [t for _, t in pod_templates()]
    for _, svc in of_kind("Service"):
        selector = svc["spec"]["selector"]
        matches = [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]
        assert matches, f"Service {svc['metadata']['name']} selects no pod template"
        port_names = {p.get("name") for t in matches for c in containers(t) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                assert target in port_names, f"Service {svc['metadata']['name']}: no port {target}"


def test_every_container_has_name_image_and_resource_requests():
    for label, template in pod_templates():
        assert containers(template), f"{label}: no containers"
        for c in containers(template):
            assert c.get("name") and c.get("image"), f"{label}: container without name/image"
            assert get(c, "resources.requests") is not MISSING, f"{label}/{c['name']}: no requests"


def test_long_running_servers_have_probes():
    for _, d in of_kind("Deployment") + of_kind("StatefulSet"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            name = f"{d['kind']}/{d['metadata']['name']}/{c['name']}"
            assert "readinessProbe" in c and "livenessProbe" in c, f"{name}: probes missing"


def test_jobs_do_not_restart_forever():
    for _, d in of_kind("Job"):
        assert d["spec"]["template"]["spec"]["restartPolicy"] in {"Never", "OnFailure"}
        assert "backoffLimit" in d["spec"]
    for _, d in of_kind("RayJob"):
        if "submitterPodTemplate" in d["spec"]:
            assert d["spec"]["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


def test_pods_run_as_non_root():
    for label, template in pod_templates():
        sc = template["spec"].get("securityContext", {})
        assert sc.get("runAsNonRoot") is True, f"{label}: runAsNonRoot is not set"
        assert sc.get("runAsUser", 1) != 0, f"{label}: runs as uid 0"
        for c in template["spec"]["containers"]:
            assert get(c, "securityContext.allowPrivilegeEscalation") is False, f"{label}/{c['name']}"


def test_no_service_is_exposed_outside_the_cluster():
    for _, svc in of_kind("Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
    for label, spec in ray_cluster_specs():
        # KubeRay creates <name>-head-svc with this type: the dashboard is reached by port-forward.
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", label
        assert "ingress" not in spec["headGroupSpec"] and "enableIngress" not in spec["headGroupSpec"]


# ---- KubeRay ----------------------------------------------------------------------------------
def test_ray_clusters_autoscale_with_cpu_and_gpu_worker_groups():
    import ray

    assert ray_cluster_specs()
    for label, spec in ray_cluster_specs():
        assert spec["enableInTreeAutoscaling"] is True, label
        assert spec["rayVersion"] == ray.__version__ == dockerfile_args(DOCKERFILE)["RAY_VERSION"]
        assert spec["headGroupSpec"]["rayStartParams"].get("dashboard-host") == "0.0.0.0"
        names = [g["groupName"] for g in spec["workerGroupSpecs"]]
        assert {"cpu", "gpu"} <= set(names) and len(names) == len(set(names)), label
        for g in spec["workerGroupSpecs"]:
            for key in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
                assert key in g, f"{label} {g.get('groupName')}: {key} missing"
            assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
            assert g["maxReplicas"] >= 1
            assert g["template"]["spec"]["containers"], f"{label} {g['groupName']}: no containers"


def test_gpu_group_requests_nvidia_gpus_on_gpu_nodes():
    for label, spec in ray_cluster_specs():
        gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu")
        pod = gpu["template"]["spec"]
        ray_container = pod["containers"][0]
        limits = ray_container["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1, label
        # Four 0.25-GPU trials with cpus_per_trial 1 must fit on one pod.
        assert int(limits["cpu"]) >= 4 * int(limits["nvidia.com/gpu"]), label
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), label
        assert pod.get("nodeSelector") or pod.get("affinity"), f"{label}: GPU pods not steered"
        assert "-cu" in ray_container["image"] or "gpu" in ray_container["image"], label
        for name, group in ray_groups(spec):
            if name != "gpu":
                for c in group["template"]["spec"]["containers"]:
                    assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), name


def _assert_token_env(where: str, env: dict[str, dict]):
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE != token"
    token = env.get("RAY_AUTH_TOKEN", {})
    assert "value" not in token, f"{where}: RAY_AUTH_TOKEN must come from a Secret, not a literal"
    ref = get(token, "valueFrom.secretKeyRef")
    assert ref is not MISSING and ref["name"] == "ray-auth-token" and ref["key"] == "auth_token", where


def test_token_auth_on_every_ray_container():
    for label, spec in ray_cluster_specs():
        _assert_token_env(f"{label} autoscaler",
                          {e["name"]: e for e in spec["autoscalerOptions"]["env"]})
        for group, g in ray_groups(spec):
            for c in g["template"]["spec"]["containers"]:
                _assert_token_env(f"{label} {group}/{c['name']}", env_map(c))
    for _, d in of_kind("RayJob"):
        for c in d["spec"]["submitterPodTemplate"]["spec"]["containers"]:
            _assert_token_env(f"RayJob/{d['metadata']['name']} submitter", env_map(c))
    secret = one("Secret", "ray-auth-token")
    assert set(secret["stringData"]) == {"auth_token"}


def test_ray_pods_share_one_read_write_many_volume_at_the_same_path():
    claim = one("PersistentVolumeClaim", "sweep-results")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for label, spec in ray_cluster_specs():
        for group, g in ray_groups(spec):
            pod = g["template"]["spec"]
            vols = {v["name"] for v in pod["volumes"] if get(v, "persistentVolumeClaim.claimName") == "sweep-results"}
            mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
                      if m["name"] in vols}
            assert mounts == {"/mnt/sweeps"}, f"{label} {group}: shared volume mounted at {mounts}"


def test_ray_pods_point_at_the_mlflow_service():
    service_port = one("Service", "mlflow")["spec"]["ports"][0]["port"]
    for label, spec in ray_cluster_specs():
        for group, g in ray_groups(spec):
            for c in g["template"]["spec"]["containers"]:
                env = env_map(c)
                assert env["MLFLOW_TRACKING_URI"]["value"] == f"http://mlflow:{service_port}", label
                for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                    ref = get(env[key], "valueFrom.secretKeyRef")
                    assert ref["name"] == "mlflow-client" and ref["optional"] is True, f"{label} {key}"


def test_rayjob_runs_a_valid_sweep_file_from_a_configmap(tmp_path: Path):
    from sweeps.validate import load_spec

    for _, job in of_kind("RayJob"):
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True
        words = spec["entrypoint"].split()
        assert words[:2] == ["sweep", "run"], spec["entrypoint"]
        sweep_file = Path(words[2])
        results_dir = words[words.index("--results-dir") + 1]
        assert results_dir.startswith("/mnt/sweeps/"), "results must go to the shared volume"
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
        volume = next(v for v in head["volumes"] if mounts.get(v["name"]) == str(sweep_file.parent))
        configmap = one("ConfigMap", volume["configMap"]["name"])
        source = tmp_path / sweep_file.name
        source.write_text(configmap["data"][sweep_file.name], encoding="utf-8")
        sweep = load_spec(str(source), [])  # raises SpecError when the embedded file is invalid
        assert sweep.resources.gpus_per_trial == 0.25


def test_rayjob_cluster_matches_the_raycluster():
    """The RayJob's cluster is the RayCluster plus the sweep-file mount: keep them in step."""
    cluster = copy.deepcopy(one("RayCluster", "sweeps")["spec"])
    for _, job in of_kind("RayJob"):
        spec = copy.deepcopy(job["spec"]["rayClusterSpec"])
        head = spec["headGroupSpec"]["template"]["spec"]
        head["volumes"] = [v for v in head["volumes"] if "configMap" not in v]
        head["containers"][0]["volumeMounts"] = [
            m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] != "/config"]
        assert spec == cluster


# ---- MLflow stack -----------------------------------------------------------------------------
def test_mlflow_server_flags_and_backend_store():
    c = one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    args = c["command"] + c["args"]
    assert args[:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in args
    assert "--artifacts-destination=s3://mlflow-artifacts/" in args
    allowed = next(a for a in args if a.startswith("--allowed-hosts="))
    hosts = allowed.split("=", 1)[1].split(",")
    assert "*" not in hosts and "mlflow:5000" in hosts and "127.0.0.1:*" in hosts
    env = env_map(c)
    uri = env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert uri.startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@postgres:5432/")
    names = list(env)
    for var in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY"):
        assert get(env[var], "valueFrom.secretKeyRef") is not MISSING, f"{var} must come from a Secret"
    # $(VAR) expansion only sees variables defined earlier in the list.
    assert max(names.index(v) for v in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")) < \
        names.index("MLFLOW_BACKEND_STORE_URI")
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://minio:9000"


def test_mlflow_basic_auth_overlay_denies_by_default():
    overlay = load_docs(DEPLOY / "mlflow-basic-auth" / "kustomization.yaml")[0]
    patch_ops = yaml.safe_load(overlay["patches"][0]["patch"])
    values = [op["value"] for op in patch_ops]
    assert "--app-name=basic-auth" in values
    env_names = {v["name"] for v in values if isinstance(v, dict) and "name" in v}
    assert {"MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= env_names
    ini = one("Secret", "mlflow-auth")["stringData"]["auth_config.ini"]
    settings = dict(re.findall(r"^(\w+)\s*=\s*(.+)$", ini, re.MULTILINE))
    assert settings["default_permission"] == "NO_PERMISSIONS"
    assert "admin_password" not in settings  # comes from MLFLOW_AUTH_ADMIN_PASSWORD
    assert settings["database_uri"].startswith("postgresql://")


def test_mlflow_versions_agree():
    server = dockerfile_args(MLFLOW_DOCKERFILE)["MLFLOW_VERSION"]
    assert dockerfile_args(DOCKERFILE)["MLFLOW_VERSION"] == server
    assert f":{server}" in one("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["image"]
    major, minor, *_ = (int(x) for x in server.split("."))
    assert (major, minor) >= (3, 17), "keep the server past the 3.x auth/path-traversal advisories"
    assert "mlflow[auth]==" in MLFLOW_DOCKERFILE.read_text()  # basic-auth needs Flask-WTF


def test_kustomizations_list_existing_files_and_no_secrets():
    for path, doc in of_kind("Kustomization"):
        for res in doc["resources"]:
            target = (path.parent / res).resolve()
            assert target.exists(), f"{path}: {res} does not exist"
            if target.is_file():
                kinds = {d["kind"] for d in load_docs(target)}
                assert "Secret" not in kinds, f"{path}: Secrets must not be applied from the repo"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("overlay", ["mlflow", "mlflow-basic-auth"])
def test_kustomize_builds(overlay: str):
    out = subprocess.run(["kubectl", "kustomize", str(DEPLOY / overlay)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert "Deployment" in kinds and "StatefulSet" in kinds


# ---- credentials --------------------------------------------------------------------------------
def test_secrets_only_in_example_files_with_placeholders():
    for path, doc in of_kind("Secret"):
        name = doc["metadata"]["name"]
        assert path.name.endswith(".example.yaml"), f"{path}: Secret {name} outside an example file"
        assert "data" not in doc, f"{path}: {name} uses base64 data; use readable stringData"
        credentials = {k: v for k, v in doc["stringData"].items() if CREDENTIAL_KEY.search(k)}
        assert credentials, f"{path}: {name} holds no credential?"
        for key, value in credentials.items():
            assert PLACEHOLDER in value, f"{path}: {name}.{key} is not a {PLACEHOLDER} placeholder"


def test_env_example_has_only_placeholders():
    values = env_file(ENV_EXAMPLE)
    credentials = {k: v for k, v in values.items() if CREDENTIAL_KEY.search(k) or k.endswith("_KEY")}
    assert {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_S3_SECRET_KEY", "RAY_AUTH_TOKEN"} <= \
        credentials.keys()
    for key, value in credentials.items():
        assert value == PLACEHOLDER, f".env.example: {key} must be {PLACEHOLDER}"
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


def test_no_known_default_password_in_any_value():
    """Parsed values only: the comments that warn about the defaults are fine."""
    values = [v for path in YAML_FILES for d in load_docs(path) for v in strings(d)]
    values += list(env_file(ENV_EXAMPLE).values())
    values += [(DEPLOY / "compose" / "minio-init.sh").read_text()]
    for value in values:
        for default in KNOWN_DEFAULT_PASSWORDS:
            assert default not in value.lower(), f"default credential {default!r} in {value[:80]!r}"


def test_no_literal_credentials_in_manifests():
    """Outside the example Secrets, credentials are references (secretKeyRef/envFrom/${VAR})."""
    for path in YAML_FILES:
        if path.name.endswith(".example.yaml"):
            continue
        for doc in load_docs(path):
            for env_list in (v for _, k, v in walk(doc) if k == "env" and isinstance(v, list)):
                for e in env_list:
                    if isinstance(e, dict) and CREDENTIAL_KEY.search(e.get("name", "")) and "value" in e:
                        assert "$(" in str(e["value"]), f"{path}: literal value for {e['name']}"


# ---- images -------------------------------------------------------------------------------------
def image_refs() -> list[tuple[str, str]]:
    refs = []
    for path in YAML_FILES:
        for doc in load_docs(path):
            for _, key, value in walk(doc):
                if key in {"image", "head_image", "worker_image"} and isinstance(value, str):
                    refs.append((str(path.relative_to(DEPLOY)), value))
    for dockerfile in (DOCKERFILE, MLFLOW_DOCKERFILE):
        refs.append((dockerfile.name, dockerfile_args(dockerfile)["BASE_IMAGE"]))
    return refs


def test_every_image_is_pinned():
    refs = image_refs()
    assert len(refs) >= 10
    for where, ref in refs:
        if "@sha256:" in ref:
            continue
        name = ref.rsplit("/", 1)[-1]
        assert ":" in name, f"{where}: {ref} has no tag (means :latest)"
        tag = name.split(":", 1)[1]
        assert tag and tag != "latest", f"{where}: {ref} is not pinned"


# ---- docker compose -----------------------------------------------------------------------------
def test_compose_binds_ports_to_localhost_and_uses_env_credentials():
    compose = load_docs(COMPOSE)[0]
    defined = env_file(ENV_EXAMPLE).keys()
    text = COMPOSE.read_text()
    for var in re.findall(r"\$\{(\w+)", text):
        assert var in defined, f"docker-compose.yaml uses ${{{var}}}, missing from .env.example"
    published = 0
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            published += 1
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: port {port}"
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        for key, value in env.items():
            if CREDENTIAL_KEY.search(key) or "postgresql://" in str(value):
                assert "${" in str(value) or value == "token", f"{name}: {key} is a literal"
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, f"{name}: no healthcheck"
    assert published >= 3
    assert {"mlflow", "postgres", "minio", "minio-init"} <= compose["services"].keys()
    mlflow_cmd = compose["services"]["mlflow"]["command"]
    assert "--serve-artifacts" in mlflow_cmd and any(a.startswith("--allowed-hosts=") for a in mlflow_cmd)
    assert compose["services"]["ray-head"]["environment"]["RAY_AUTH_MODE"] == "token"


# ---- Dockerfile ---------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=["sweeps", "mlflow"])
def test_dockerfile_runs_as_non_root(path: Path):
    instructions = dockerfile_instructions(path)
    users = [rest for op, rest in instructions if op == "USER"]
    assert users, f"{path}: no USER instruction (would run as root)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{path}: final USER is root"
    last_user_at = max(i for i, (op, _) in enumerate(instructions) if op == "USER")
    assert not any(op == "RUN" for op, _ in instructions[last_user_at:]), "RUN after USER: as which user?"
    assert instructions[0][0] in {"ARG", "FROM"} and any(op == "FROM" for op, _ in instructions)


def test_dockerfile_installs_the_package_with_pinned_torch_and_ray():
    instructions = dockerfile_instructions(DOCKERFILE)
    runs = " ".join(rest for op, rest in instructions if op == "RUN")
    copies = " ".join(rest for op, rest in instructions if op == "COPY")
    assert "pip install ." in runs
    for needed in ("pyproject.toml", "README.md", "sweeps", "trainer", "tracking"):
        assert needed in copies, f"Dockerfile does not COPY {needed}"
    args = dockerfile_args(DOCKERFILE)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"torch=={args["TORCH_VERSION"]}"' in pyproject
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert '"ray[default,tune]==${RAY_VERSION}"' in runs  # the dashboard / Jobs API need ray[default]
    assert "sweep --help" in runs
    ignore = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ".git" in ignore and "README.md" not in ignore


# ---- Ray cluster launcher -----------------------------------------------------------------------
def test_cluster_launcher_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = load_docs(LAUNCHER)[0]
    validate_config(copy.deepcopy(raw))                   # the file as written
    validate_config(prepare_config(copy.deepcopy(raw)))   # as `ray up` sees it (AWS defaults merged)

    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_worker"]["min_worker"] = 1  # typo: not in the schema
    with pytest.raises(Exception):
        validate_config(broken)


def test_cluster_launcher_head_and_gpu_workers():
    cfg = load_docs(LAUNCHER)[0]
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpu = [v for v in workers.values() if v["resources"].get("GPU", 0) >= 1]
    assert gpu, "no GPU worker type"
    for w in gpu:
        assert 0 <= w["min_workers"] <= w["max_workers"] <= cfg["max_workers"]
        assert w["node_config"]["InstanceType"].startswith(("g", "p"))
    commands = " ".join(cfg["setup_commands"] + cfg["head_setup_commands"] + cfg["worker_setup_commands"])
    assert "~/sweeps" in commands and "ray[default,tune]==2.60.0" in commands
    assert "/home/ubuntu/sweeps" in cfg["file_mounts"]
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd
    assert "get-auth-token --generate" in commands
    assert "/mnt/sweeps" in commands
