import pytest

from lipsync.errors import InvalidSpec, REASONS, PERMANENT_EXIT_CODES
from lipsync.spec import parse_job


def _job(**spec):
    base = {"video": "in.mp4", "audio": "speech.wav", "output": {"uri": "out"}}
    base.update(spec)
    return {"apiVersion": "lipsync.dev/v1alpha1", "kind": "LipSyncJob", "metadata": {"name": "demo"}, "spec": base}


def test_defaults_fill_in():
    job = parse_job(_job())
    assert job.spec.model.name == "baseline"
    assert job.spec.face.select == "largest"
    assert job.spec.timing.follow == "audio"
    assert job.spec.output.crf == 18


def test_unknown_field_is_named():
    with pytest.raises(InvalidSpec) as e:
        parse_job(_job(face={"paddding": 0.3}))
    assert "spec.face.paddding" in str(e.value)
    assert "unknown field" in str(e.value)
    assert e.value.exit_code == REASONS["InvalidSpec"].exit_code


def test_model_options_validated_per_model():
    with pytest.raises(InvalidSpec) as e:
        parse_job(_job(model={"name": "wav2lip", "weights": "w.pth", "options": {"batchSize": 0}}))
    assert "spec.model.options: for model 'wav2lip': batchSize" in str(e.value)
    with pytest.raises(InvalidSpec) as e:
        parse_job(_job(model={"name": "baseline", "options": {"batchSize": 4}}))
    assert "spec.model.options: for model 'baseline': batchSize: unknown field" in str(e.value)


def test_weights_required_for_wav2lip():
    with pytest.raises(InvalidSpec, match="needs spec.model.weights"):
        parse_job(_job(model={"name": "wav2lip"}))


def test_bad_uri_scheme():
    with pytest.raises(InvalidSpec, match="unsupported scheme 'ftp'"):
        parse_job(_job(video="ftp://host/x.mp4"))


def test_bad_name():
    doc = _job()
    doc["metadata"]["name"] = "Not_A_Name"
    with pytest.raises(InvalidSpec, match="DNS-1123"):
        parse_job(doc)


def test_exit_codes_distinct():
    codes = [r.exit_code for r in REASONS.values()]
    assert len(codes) == len(set(codes))
    assert 0 not in codes and 75 not in PERMANENT_EXIT_CODES


@pytest.mark.parametrize("field,value", [
    ("video", "s3://media/a/../b.mp4"),
    ("audio", "s3://media/./speech.wav"),
    ("video", "https://cdn.example.com/v/%2e%2e/secret.mp4"),
    ("output", {"uri": "s3://renders/team-a/../team-b/promo"}),
    ("model", {"name": "wav2lip", "weights": "s3://models/x/../wav2lip.pth"}),
])
def test_dot_segments_in_uris_are_invalid_everywhere(field, value):
    """Not a retried InternalError at fetch time: InvalidSpec up front, naming the field."""
    with pytest.raises(InvalidSpec) as e:
        parse_job(_job(**{field: value}))
    assert "'.' or '..' segment" in str(e.value)
    assert f"spec.{field}" in str(e.value)


def test_dots_inside_names_and_local_relative_paths_are_fine():
    job = parse_job(_job(video="s3://media/v1..2/face.v2.mp4", audio="../sample/speech.wav"))
    assert job.spec.video == "s3://media/v1..2/face.v2.mp4"


@pytest.mark.parametrize("field,value", [
    ("video", "/tmp/face.mp4"), ("video", "file:///etc/passwd"), ("audio", "http://10.0.0.1/speech.wav"),
    ("audio", "speech.wav"), ("output", {"uri": "/tmp/out"}), ("output", {"uri": "https://example.com/out"}),
    ("model", {"name": "wav2lip", "weights": "/models/wav2lip.pth"}),
])
def test_in_cluster_only_remote_uris(field, value):
    from lipsync.policy import ClusterPolicy, check

    remote = {"video": "s3://media/in.mp4", "audio": "https://cdn.example.com/s.wav", "output": {"uri": "s3://renders/x"}}
    job = parse_job(_job(**{**remote, field: value}))
    with pytest.raises(InvalidSpec) as e:
        check(job.spec, ClusterPolicy())
    assert f"spec.{field}" in str(e.value) and "in a cluster" in str(e.value)
    check(parse_job(_job(video="s3://media/in.mp4", audio="https://cdn.example.com/s.wav",
                         output={"uri": "s3://renders/x"})).spec, ClusterPolicy())  # remote: fine
