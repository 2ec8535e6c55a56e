"""settings.py: environment → one frozen dataclass."""

from __future__ import annotations

import pytest

from lipsync_operator.settings import Settings, SettingsError


def test_defaults():
    s = Settings.from_env({})
    assert (s.gpu_resource, s.gpu_budget, s.active_deadline_seconds, s.ttl_seconds_after_finished,
            s.backoff_limit, s.progress_interval, s.metrics_port) == ("nvidia.com/gpu", 2, 21600, 86400, 3, 5.0, 9090)
    assert s.kueue_queue is None and s.s3_secret is None and s.node_selector == {} and s.tolerations == ()


def test_every_variable_the_chart_sets():
    s = Settings.from_env({
        "LIPSYNC_RUNNER_IMAGE": "img:2", "LIPSYNC_RUNNER_SERVICE_ACCOUNT": "sa",
        "LIPSYNC_GPU_RESOURCE": "amd.com/gpu", "LIPSYNC_GPU_BUDGET": "4", "LIPSYNC_KUEUE_QUEUE": "q",
        "LIPSYNC_NODE_SELECTOR": '{"pool": "gpu"}', "LIPSYNC_TOLERATIONS": '[{"key": "gpu", "operator": "Exists"}]',
        "LIPSYNC_PRIORITY_CLASS": "low", "LIPSYNC_S3_SECRET": "creds", "LIPSYNC_S3_ENDPOINT": "http://minio:9000",
        "LIPSYNC_ACTIVE_DEADLINE_SECONDS": "60", "LIPSYNC_TTL_SECONDS_AFTER_FINISHED": "0",
        "LIPSYNC_BACKOFF_LIMIT": "1", "LIPSYNC_RUNNER_CPU": "500m", "LIPSYNC_RUNNER_MEMORY": "2Gi",
        "LIPSYNC_PROGRESS_INTERVAL": "2.5", "LIPSYNC_METRICS_PORT": "0",
    })
    assert s == Settings(
        runner_image="img:2", runner_service_account="sa", gpu_resource="amd.com/gpu", gpu_budget=4,
        kueue_queue="q", node_selector={"pool": "gpu"}, tolerations=({"key": "gpu", "operator": "Exists"},),
        priority_class="low", s3_secret="creds", s3_endpoint="http://minio:9000", active_deadline_seconds=60,
        ttl_seconds_after_finished=0, backoff_limit=1, runner_cpu="500m", runner_memory="2Gi",
        progress_interval=2.5, metrics_port=0)


@pytest.mark.parametrize("env, named", [
    ({"LIPSYNC_GPU_BUDGET": "two"}, "LIPSYNC_GPU_BUDGET"),
    ({"LIPSYNC_GPU_BUDGET": "-1"}, "LIPSYNC_GPU_BUDGET"),
    ({"LIPSYNC_NODE_SELECTOR": "[1]"}, "LIPSYNC_NODE_SELECTOR"),
    ({"LIPSYNC_NODE_SELECTOR": "{bad"}, "LIPSYNC_NODE_SELECTOR"),
    ({"LIPSYNC_TOLERATIONS": '{"key": "x"}'}, "LIPSYNC_TOLERATIONS"),
    ({"LIPSYNC_PROGRESS_INTERVAL": "0"}, "LIPSYNC_PROGRESS_INTERVAL"),
])
def test_bad_values_name_the_variable(env, named):
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_empty_means_unset():
    assert Settings.from_env({"LIPSYNC_KUEUE_QUEUE": " ", "LIPSYNC_GPU_BUDGET": ""}) == Settings()


def test_console_script_fails_fast_naming_the_variable(monkeypatch, capsys):
    from lipsync_operator import main

    monkeypatch.setenv("LIPSYNC_TOLERATIONS", "nope")
    with pytest.raises(SystemExit) as e:
        main.main([])
    assert e.value.code == 2 and "LIPSYNC_TOLERATIONS" in capsys.readouterr().err


def test_console_script_runs_kopf_standalone_clusterwide_json_with_liveness():
    from lipsync_operator.main import kopf_args

    args = kopf_args(["--verbose"], Settings.from_env({}))
    assert args[0] == "run" and "--standalone" in args and "--all-namespaces" in args
    assert "--log-format=json" in args and "--liveness=http://0.0.0.0:8080/healthz" in args
    assert args[args.index("-m") + 1] == "lipsync_operator.handlers" and args[-1] == "--verbose"


def test_command_policy_per_namespace_and_for_all():
    s = Settings.from_env({"LIPSYNC_COMMAND_POLICY": '{"research": ["*"], "*": ["/opt/m/run"], "media": ["/bin/x"]}'})
    assert s.cluster_policy("research").commands == ("*",)
    assert s.cluster_policy("media").commands == ("/bin/x", "/opt/m/run")
    assert s.cluster_policy("elsewhere").commands == ("/opt/m/run",)
    assert Settings.from_env({}).cluster_policy("research").commands == ()  # refused unless allowed
    with pytest.raises(SettingsError, match="LIPSYNC_COMMAND_POLICY"):
        Settings.from_env({"LIPSYNC_COMMAND_POLICY": '{"research": "/bin/sh"}'})


def test_job_namespaces_scope_the_operator():
    from lipsync_operator.main import kopf_args

    s = Settings.from_env({"LIPSYNC_JOB_NAMESPACES": "renders, team-b,renders"})
    assert s.job_namespaces == ("renders", "team-b")
    args = kopf_args(settings=s)
    assert "--namespace=renders" in args and "--namespace=team-b" in args and "--all-namespaces" not in args
    assert "--all-namespaces" in kopf_args(settings=Settings.from_env({}))
    with pytest.raises(SettingsError, match="LIPSYNC_JOB_NAMESPACES"):
        Settings.from_env({"LIPSYNC_JOB_NAMESPACES": "Bad_Name"})


def test_output_prefix_is_per_namespace():
    s = Settings.from_env({"LIPSYNC_OUTPUT_PREFIX": "s3://renders/{namespace}/"})
    assert s.cluster_policy("team-a").output_prefix == "s3://renders/team-a/"
    for bad in ("s3://renders/shared/", "/tmp/{namespace}"):
        with pytest.raises(SettingsError, match="LIPSYNC_OUTPUT_PREFIX"):
            Settings.from_env({"LIPSYNC_OUTPUT_PREFIX": bad})


def test_track_cache_is_per_namespace():
    s = Settings.from_env({"LIPSYNC_TRACK_CACHE": "s3://lipsync-tracks/{namespace}/"})
    assert s.runner_cache_env("team-a") == {"LIPSYNC_TRACK_CACHE": "s3://lipsync-tracks/team-a/"}
    assert Settings.from_env({}).runner_cache_env("team-a") == {}
    assert Settings.from_env({"LIPSYNC_TRACK_CACHE": "off"}).runner_cache_env("team-a") == {}
    for bad in ("s3://lipsync-tracks/shared/", "/var/cache/{namespace}"):
        with pytest.raises(SettingsError, match="LIPSYNC_TRACK_CACHE"):
            Settings.from_env({"LIPSYNC_TRACK_CACHE": bad})
