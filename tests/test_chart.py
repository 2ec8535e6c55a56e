"""The Helm chart, rendered and linted by real Helm (v4, embedded by helm-python-sdk), every
manifest checked against Kubernetes' own schemas."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .k8s_helpers import KUBE_VERSION, ROOT, k8s_validate
from lipsync.crd import CRD_NAME, crd_yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk renders the chart with real Helm")

CHART = ROOT / "charts" / "lipsync-operator"
RELEASE, NAMESPACE = "lipsync-operator", "lipsync-system"

# The operator reads exactly these (operator/lipsync_operator: its settings).
OPERATOR_ENV = {
    "LIPSYNC_RUNNER_IMAGE", "LIPSYNC_RUNNER_SERVICE_ACCOUNT", "LIPSYNC_GPU_RESOURCE",
    "LIPSYNC_GPU_BUDGET", "LIPSYNC_KUEUE_QUEUE", "LIPSYNC_NODE_SELECTOR", "LIPSYNC_TOLERATIONS",
    "LIPSYNC_PRIORITY_CLASS", "LIPSYNC_S3_SECRET", "LIPSYNC_S3_ENDPOINT",
    "LIPSYNC_ACTIVE_DEADLINE_SECONDS", "LIPSYNC_TTL_SECONDS_AFTER_FINISHED", "LIPSYNC_BACKOFF_LIMIT",
    "LIPSYNC_RUNNER_CPU", "LIPSYNC_RUNNER_MEMORY", "LIPSYNC_PROGRESS_INTERVAL", "LIPSYNC_METRICS_PORT",
    "LIPSYNC_HEALTH_PORT", "LIPSYNC_COMMAND_POLICY", "LIPSYNC_JOB_NAMESPACES",
    "LIPSYNC_RUNNER_EPHEMERAL_STORAGE", "LIPSYNC_SCRATCH_SIZE_LIMIT", "LIPSYNC_MAX_INPUT_BYTES",
    "LIPSYNC_MAX_WEIGHTS_BYTES", "LIPSYNC_DOWNLOAD_DEADLINE_SECONDS", "LIPSYNC_OUTPUT_PREFIX", "LIPSYNC_TRACK_CACHE",
    "LIPSYNC_LEASE_NAMESPACE", "LIPSYNC_LEASE_NAME",
}

CUSTOM_VALUES: dict[str, Any] = {
    "image": {"tag": "0.1.0-cuda"},
    "runner": {
        "jobNamespaces": ["renders", "lipsync-jobs"],
        "kueueQueue": "gpu-renders",
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "batch-low",
        "gpu": {"budget": 8},
        "activeDeadlineSeconds": 3600,
        "ttlSecondsAfterFinished": 1000000,
        "cpu": "8",
        "memory": "32Gi",
        "progressInterval": 2.5,
        "commandPolicy": {"research": ["*"], "*": ["/opt/musetalk/run.sh"]},
        "outputPrefix": "s3://renders/{namespace}/",
        "trackCache": "s3://lipsync-tracks/{namespace}/",
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/lipsync"},
                           "imagePullSecrets": [{"name": "registry-creds"}]},
    },
    "s3": {"endpoint": "http://minio.minio:9000", "createSecret": True,
           "accessKeyId": "minio", "secretAccessKey": "minio-secret"},
    "metrics": {"port": 9100, "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "operator": {"extraArgs": ["--verbose"], "nodeSelector": {"kubernetes.io/os": "linux"}, "healthPort": 8081},
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(v for k, v in out.items() if k.endswith("NOTES.txt"))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deploy,) = by_kind(docs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in operator_container(docs)["env"] if "value" in e}


VALUE_SETS = {"defaults": {}, "custom": CUSTOM_VALUES}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_lints_under_helm(name: str):
    report = helm.lint(str(CHART), VALUE_SETS[name] or None, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert problems == [] and report["errors"] == [], report


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_manifests_validate_against_kubernetes(name: str):
    docs = render(VALUE_SETS[name])
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # not a built-in kind; checked in test_service_monitor
        k8s_validate(doc)


def test_chart_crd_is_the_generated_one():
    with helm.Chart.load(str(CHART)) as chart:
        crds = chart.crds
    assert [c["name"] for c in crds] == [f"crds/{CRD_NAME}.yaml"]
    assert crds[0]["data"].rstrip("\n") == crd_yaml().rstrip("\n")
    k8s_validate(yaml.safe_load(crd_yaml()))


def test_default_values_fit_the_schema_and_typos_are_refused():
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema({"runner": {"kueueQueu": "q"}})
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema({"image": {"tag": "latest"}})
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema({"runner": {"gpu": {"budget": -1}}})


@pytest.mark.parametrize("name", VALUE_SETS)
def test_operator_pod_is_locked_down(name: str):
    docs = render(VALUE_SETS[name])
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = operator_container(docs)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc.get("privileged", False) is False
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports[get["port"]] == VALUE_SETS[name].get("operator", {}).get("healthPort", 8080)
    assert ":latest" not in c["image"] and ":" in c["image"]
    # args, not command: the image's ENTRYPOINT (tini, PID 1) stays in front of the operator
    assert "command" not in c and c["args"][0] == "lipsync-operator"


def test_operator_runs_as_the_image_user():
    """The chart's UID is the Dockerfile's USER, so file permissions in the image hold."""
    from .test_dockerfile import final_user

    c = operator_container(render())
    assert str(c["securityContext"]["runAsUser"]) == final_user().split(":")[0]


def test_default_env():
    env = env_of(render())
    assert set(env) <= OPERATOR_ENV
    assert env["LIPSYNC_GPU_RESOURCE"] == "nvidia.com/gpu"
    assert env["LIPSYNC_GPU_BUDGET"] == "2"
    assert env["LIPSYNC_METRICS_PORT"] == "9090"
    assert json.loads(env["LIPSYNC_NODE_SELECTOR"]) == {}
    assert json.loads(env["LIPSYNC_TOLERATIONS"]) == []
    assert json.loads(env["LIPSYNC_COMMAND_POLICY"]) == {}  # no command model anywhere unless allowed
    assert env["LIPSYNC_RUNNER_IMAGE"] == operator_container(render())["image"]
    for unset in ("LIPSYNC_KUEUE_QUEUE", "LIPSYNC_PRIORITY_CLASS", "LIPSYNC_S3_SECRET", "LIPSYNC_S3_ENDPOINT"):
        assert unset not in env  # off unless configured
    assert by_kind(render(), "Secret") == [] and by_kind(render(), "ServiceMonitor") == []


def test_custom_env():
    docs = render(CUSTOM_VALUES)
    env = env_of(docs)
    assert set(env) == OPERATOR_ENV
    assert env["LIPSYNC_KUEUE_QUEUE"] == "gpu-renders"
    assert json.loads(env["LIPSYNC_NODE_SELECTOR"]) == CUSTOM_VALUES["runner"]["nodeSelector"]
    assert json.loads(env["LIPSYNC_TOLERATIONS"]) == CUSTOM_VALUES["runner"]["tolerations"]
    assert env["LIPSYNC_PRIORITY_CLASS"] == "batch-low"
    assert env["LIPSYNC_GPU_BUDGET"] == "8"
    assert env["LIPSYNC_TTL_SECONDS_AFTER_FINISHED"] == "1000000"  # not 1e+06
    assert env["LIPSYNC_ACTIVE_DEADLINE_SECONDS"] == "3600"
    assert env["LIPSYNC_PROGRESS_INTERVAL"] == "2.5"
    assert json.loads(env["LIPSYNC_COMMAND_POLICY"]) == CUSTOM_VALUES["runner"]["commandPolicy"]
    assert env["LIPSYNC_RUNNER_CPU"] == "8" and env["LIPSYNC_RUNNER_MEMORY"] == "32Gi"
    assert env["LIPSYNC_METRICS_PORT"] == "9100"
    assert env["LIPSYNC_S3_ENDPOINT"] == "http://minio.minio:9000"
    assert env["LIPSYNC_RUNNER_IMAGE"].endswith(":0.1.0-cuda")
    c = operator_container(docs)
    assert c["args"] == ["lipsync-operator", "--verbose"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == 9100


def test_s3_secret_in_every_job_namespace():
    docs = render(CUSTOM_VALUES)
    secrets = by_kind(docs, "Secret")
    assert sorted(s["metadata"]["namespace"] for s in secrets) == ["lipsync-jobs", "renders"]
    for s in secrets:
        assert s["metadata"]["name"] == env_of(docs)["LIPSYNC_S3_SECRET"]
        assert set(s["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # preferred: a Secret the user made; the chart then creates none
    docs = render({"s3": {"existingSecret": "minio-creds"}})
    assert env_of(docs)["LIPSYNC_S3_SECRET"] == "minio-creds" and by_kind(docs, "Secret") == []


def test_s3_secret_needs_its_keys_and_excludes_existing():
    with pytest.raises(helm.HelmError, match="s3.accessKeyId"):
        render({"s3": {"createSecret": True}})
    with pytest.raises(helm.HelmError, match="exclusive"):
        render({"s3": {"createSecret": True, "existingSecret": "x", "accessKeyId": "a", "secretAccessKey": "b"}})


def test_runner_service_account_can_be_brought():
    docs = render({"runner": {"serviceAccount": {"create": False, "name": "renderer"}}})
    assert env_of(docs)["LIPSYNC_RUNNER_SERVICE_ACCOUNT"] == "renderer"
    assert [sa["metadata"]["name"] for sa in by_kind(docs, "ServiceAccount")] == [RELEASE]  # the operator's only
    with pytest.raises(helm.HelmError, match="runner.serviceAccount.name is needed"):
        render({"runner": {"serviceAccount": {"create": False}}})


def test_runner_service_account_has_no_api_access():
    for values in ({}, CUSTOM_VALUES):
        docs = render(values)
        runner_sa = env_of(docs)["LIPSYNC_RUNNER_SERVICE_ACCOUNT"]
        sas = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"] == runner_sa]
        expected = values.get("runner", {}).get("jobNamespaces") or [NAMESPACE]
        assert sorted(sa["metadata"]["namespace"] for sa in sas) == sorted(expected)
        assert all(sa["automountServiceAccountToken"] is False for sa in sas)
        pull = values.get("runner", {}).get("serviceAccount", {}).get("imagePullSecrets")
        assert all(sa.get("imagePullSecrets") == pull for sa in sas)
        for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
            assert runner_sa not in [s["name"] for s in binding["subjects"]]


def _rendered_roles(values: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """namespace → the rules the operator's ServiceAccount is bound to there (Roles only)."""
    docs = render(values)
    (deploy,) = by_kind(docs, "Deployment")
    sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in by_kind(docs, "Role")}
    out: dict[str, list[dict[str, Any]]] = {}
    for binding in by_kind(docs, "RoleBinding"):
        if binding["metadata"]["name"].endswith("-leader-election"):
            continue  # the Lease's Role: test_two_replicas_elect_a_leader
        ns = binding["metadata"]["namespace"]
        assert binding["roleRef"]["kind"] == "Role"
        (subject,) = binding["subjects"]
        assert (subject["kind"], subject["name"], subject["namespace"]) == ("ServiceAccount", sa, NAMESPACE)
        out[ns] = roles[ns, binding["roleRef"]["name"]]["rules"]
    return out


def test_rbac_is_namespaced_to_the_job_namespaces():
    """Nothing cluster-wide; a Role in each job namespace, and the operator watches exactly those."""
    for values in ({}, CUSTOM_VALUES):
        docs = render(values)
        assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
        expected = values.get("runner", {}).get("jobNamespaces") or [NAMESPACE]
        assert sorted(_rendered_roles(values)) == sorted(expected)
        env = env_of(docs)
        assert env["LIPSYNC_JOB_NAMESPACES"].split(",") == expected
        from lipsync_operator.main import kopf_args
        from lipsync_operator.settings import Settings

        args = kopf_args(settings=Settings.from_env(env))
        assert [a for a in args if a.startswith("--namespace")] == [f"--namespace={ns}" for ns in expected]
        assert "--all-namespaces" not in args


def test_rbac_is_least_privilege():
    for rules in _rendered_roles(CUSTOM_VALUES).values():
        for rule in rules:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[key], rule
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
            assert not {"secrets", "configmaps", "serviceaccounts", "roles", "rolebindings",
                        "clusterroles", "clusterrolebindings"} & set(rule["resources"]), rule
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        verbs = {(g, r): set(rule["verbs"]) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
        assert verbs[("lipsync.dev", "lipsyncjobs/status")] == {"patch"}
        assert "update" not in verbs[("lipsync.dev", "lipsyncjobs")]  # spec is the user's
        assert ("", "pods/exec") not in verbs


def test_rbac_equals_the_operators_declared_list():
    from lipsync_operator.permissions import CLUSTER_RULES, RULES

    assert CLUSTER_RULES == []
    for rules in _rendered_roles(CUSTOM_VALUES).values():
        assert rules == RULES


def test_service_and_service_monitor():
    docs = render(CUSTOM_VALUES)
    (svc,) = by_kind(docs, "Service")
    (port,) = svc["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 9100, "metrics")
    (deploy,) = by_kind(docs, "Deployment")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"


def test_notes_say_what_to_run_next():
    text = notes()
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}" in text
    assert f"kubectl get lsj -n {NAMESPACE} -w" in text
    assert "s3.existingSecret" in text  # nothing configured: says how
    text = notes(CUSTOM_VALUES)
    assert "kubectl get lsj -n renders -w" in text and "Kueue" in text


@pytest.mark.parametrize("doc_path", ["docs/install.md", "README.md"])
def test_install_doc_matches_the_chart(doc_path: str):
    """The install docs: the files they name exist, and their `helm install --set`s fit the chart."""
    import re

    doc = (ROOT / doc_path).read_text()
    for path in set(re.findall(r"\b((?:examples|charts|crds)/[\w./-]+\w)", doc)):
        assert (ROOT / path).exists(), f"{doc_path} names {path}, which does not exist"
    sets = re.findall(r"--set '?([^ ']+)'?", doc)
    assert sets
    values: dict[str, Any] = {}
    for expression in sets:
        merged = helm.parse_set_string(expression)
        for key, value in merged.items():
            values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
    docs = render(values)
    env = env_of(docs)
    assert env["LIPSYNC_S3_SECRET"] == "lipsync-s3"
    (deploy,) = by_kind(docs, "Deployment")
    if doc_path == "docs/install.md":
        assert f"deployment/{deploy['metadata']['name']}" in doc
    for key in re.findall(r"`((?:runner|metrics|s3)\.(?!json`)[\w.]+)`", doc):  # not the file metrics.json
        node: Any = yaml.safe_load((CHART / "values.yaml").read_text())
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{doc_path} names {key}, not in values.yaml"
            node = node[part]


def test_health_port_reaches_the_operator():
    """A non-default health port moves the probes and the port kopf listens on together."""
    from lipsync_operator.main import kopf_args
    from lipsync_operator.settings import Settings

    docs = render(CUSTOM_VALUES)
    c = operator_container(docs)
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["health"]
    assert port == 8081 and c["livenessProbe"]["httpGet"]["port"] in ("health", 8081)
    settings = Settings.from_env(env_of(docs))
    assert f"--liveness=http://0.0.0.0:{port}/healthz" in kopf_args(settings=settings)


def test_runner_pods_have_storage_limits_and_a_read_only_root():
    """The chart's values, through the operator's settings, into the Job it makes."""
    from lipsync.spec import parse_job
    from lipsync_operator.jobs import job_manifest
    from lipsync_operator.settings import Settings

    settings = Settings.from_env(env_of(render({"runner": {"downloads": {"deadlineSeconds": 600}}})))
    job = parse_job({"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob",
                     "metadata": {"name": "x", "namespace": NAMESPACE, "uid": "u-1"},
                     "spec": {"video": "s3://media/v.mp4", "audio": "s3://media/a.wav", "output": {"uri": "s3://media/out"}}})
    manifest = job_manifest(job, settings)
    k8s_validate(manifest)
    pod = manifest["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["requests"]["ephemeral-storage"] == c["resources"]["limits"]["ephemeral-storage"] == "64Gi"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    (vol,) = pod["volumes"]
    assert vol["emptyDir"] == {"sizeLimit": "60Gi"}
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/tmp"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LIPSYNC_MAX_INPUT_BYTES"] == env["LIPSYNC_MAX_WEIGHTS_BYTES"] == str(20 * 1024**3)
    assert env["LIPSYNC_DOWNLOAD_DEADLINE_SECONDS"] == "600"
    assert env["TMPDIR"] == env["HOME"] == "/tmp"


@pytest.mark.parametrize("replicas", [1, 2])
def test_two_replicas_elect_a_leader(replicas: int):
    """replicas: 2 is supported: every replica gets the Lease settings and its own identity, and the
    Lease's Role (only in the release namespace) grants exactly permissions.LEASE_RULES."""
    from lipsync_operator.permissions import LEASE_RULES
    from lipsync_operator.settings import Settings

    docs = render({"operator": {"replicas": replicas}})
    (deploy,) = by_kind(docs, "Deployment")
    assert deploy["spec"]["replicas"] == replicas
    env = env_of(docs)
    settings = Settings.from_env(env)
    assert settings.lease_namespace == NAMESPACE and settings.lease_name == deploy["metadata"]["name"]
    (pod_name,) = [e for e in operator_container(docs)["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    roles = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    (role,) = roles
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == LEASE_RULES
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == role["metadata"]["name"]]
    assert binding["subjects"][0]["name"] == deploy["spec"]["template"]["spec"]["serviceAccountName"]


def test_more_replicas_than_supported_are_refused():
    with pytest.raises(Exception, match="replicas"):
        render({"operator": {"replicas": 5}})


def test_metrics_port_0_turns_metrics_off():
    from lipsync_operator.settings import Settings

    docs = render({"metrics": {"port": 0, "serviceMonitor": {"enabled": True}}})
    for doc in docs:
        k8s_validate(doc)
    assert by_kind(docs, "Service") == [] and by_kind(docs, "ServiceMonitor") == []
    c = operator_container(docs)
    assert [p["name"] for p in c["ports"]] == ["health"]
    assert Settings.from_env(env_of(docs)).metrics_port == 0  # the operator serves nothing


def test_output_prefix_reaches_the_operator():
    from lipsync_operator.settings import Settings

    settings = Settings.from_env(env_of(render(CUSTOM_VALUES)))
    assert settings.cluster_policy("renders").output_prefix == "s3://renders/renders/"
    assert "LIPSYNC_OUTPUT_PREFIX" not in env_of(render())
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError):
        chart.validate_schema({"runner": {"outputPrefix": "s3://renders/shared/"}})  # no {namespace}


def test_track_cache_reaches_the_operator():
    from lipsync_operator.settings import Settings

    settings = Settings.from_env(env_of(render(CUSTOM_VALUES)))
    assert settings.runner_cache_env("lipsync-jobs") == {"LIPSYNC_TRACK_CACHE": "s3://lipsync-tracks/lipsync-jobs/"}
    assert "LIPSYNC_TRACK_CACHE" not in env_of(render())
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmError):
        chart.validate_schema({"runner": {"trackCache": "s3://lipsync-tracks/shared/"}})  # no {namespace}


def test_install_doc_has_the_security_model():
    """What a LipSyncJob author can and cannot do, and each setting it names is a chart value
    (test_install_doc_matches_the_chart checks the names)."""
    doc = (ROOT / "docs/install.md").read_text()
    section = doc.split("### Security model", 1)[1]
    assert "**A LipSyncJob author can**" in section and "**A LipSyncJob author cannot**" in section
    for setting in ("runner.commandPolicy", "runner.outputPrefix", "runner.jobNamespaces", "runner.downloads",
                    "s3.existingSecret"):
        assert f"`{setting}" in section, setting


def test_notes_warn_about_one_credential_for_many_namespaces():
    assert "ONE credential" in notes(CUSTOM_VALUES)  # two job namespaces, a chart-made Secret
    assert "ONE credential" not in notes({"s3": {"existingSecret": "x"}})
    assert "runner.commandPolicy" in notes() and "runner.commandPolicy" not in notes(CUSTOM_VALUES)
