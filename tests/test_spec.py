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
