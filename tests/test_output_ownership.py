"""Who may replace a finished render: never a job of another namespace (lipsync.io.publish)."""

from __future__ import annotations

import pytest


def test_a_render_of_another_namespace_is_never_overwritten(tmp_path):
    """Beside the prefix policy: overwrite: true replaces only renders of the same namespace."""
    import json

    from lipsync.errors import OutputExists
    from lipsync.io.publish import check_existing, open_store

    theirs = {"job": "promo", "namespace": "team-b", "uid": "b-1", "inputs": {}, "spec_sha256": "x"}
    (tmp_path / "metrics.json").write_text(json.dumps({"identity": theirs}))
    store = open_store(str(tmp_path))
    mine = {"job": "raid", "namespace": "team-a", "uid": "a-1", "inputs": {}, "spec_sha256": "y"}
    with pytest.raises(OutputExists, match="namespace 'team-b'.*whatever spec.output.overwrite says"):
        check_existing(store, mine)
    same_ns = {**mine, "namespace": "team-b"}
    assert check_existing(store, same_ns)[0] == "other-job"  # overwrite: true may replace it
    assert check_existing(store, {**mine, "namespace": None})[0] == "other-job"  # the CLI, no namespaces
