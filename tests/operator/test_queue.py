"""queue.py: the GPU budget decision (pure)."""

from __future__ import annotations

from lipsync_operator.queue import Candidate, JobFact, plan


def cand(name, t, gpu=True, **kw):
    return Candidate(namespace="ns", name=name, uid=f"uid-{name}", created=f"2026-01-01T00:00:{t:02d}Z", gpu=gpu, **kw)


def fact(name, gpu=True, finished=False):
    return JobFact(namespace="ns", name=f"lipsync-{name}", owner=name, uid=f"uid-{name}", gpu=gpu, finished=finished)


def names(cs):
    return [c.name for c in cs]


def test_at_most_budget_oldest_first_then_by_name():
    cs = [cand("c", 3), cand("a", 1), cand("b2", 2), cand("b1", 2), cand("d", 4)]
    p = plan(cs, [], budget=2)
    assert names(p.start) == ["a", "b1"]
    assert names(p.wait) == ["b2", "c", "d"]


def test_running_jobs_count_finished_ones_free_their_slot():
    cs = [cand("a", 1), cand("b", 2), cand("c", 3)]
    p = plan(cs + [cand("x", 0), cand("y", 0)], [fact("x"), fact("y")], budget=2)
    assert p.start == [] and names(p.wait) == ["a", "b", "c"] and p.running == 2
    p = plan(cs, [fact("x", finished=True), fact("y")], budget=2)
    assert names(p.start) == ["a"] and names(p.wait) == ["b", "c"]


def test_in_flight_jobs_hold_their_slot_until_seen():
    a, b = cand("a", 1), cand("b", 2)
    p = plan([a, b], [], budget=1, in_flight=[a])
    assert p.start == [] and names(p.wait) == ["b"] and p.running == 1


def test_non_gpu_never_waits_and_never_counts():
    cs = [cand("g1", 1), cand("cpu", 2, gpu=False), cand("g2", 3)]
    p = plan(cs, [fact("old-cpu", gpu=False)], budget=1)
    assert names(p.start) == ["cpu", "g1"] and names(p.wait) == ["g2"]


def test_invalid_finished_deleting_and_started_are_not_candidates():
    cs = [cand("bad", 1, valid=False), cand("done", 2, finished=True), cand("bye", 3, deleting=True),
          cand("has-job", 4), cand("ok", 5)]
    p = plan(cs, [fact("has-job", finished=True)], budget=5)
    assert names(p.start) == ["ok"] and p.wait == []


def test_kueue_starts_everything():
    cs = [cand(f"j{i}", i) for i in range(5)]
    p = plan(cs, [fact("x")], budget=1, kueue=True)
    assert len(p.start) == 5 and p.wait == []


def test_zero_budget_queues_all_gpu_jobs():
    p = plan([cand("a", 1), cand("b", 2, gpu=False)], [], budget=0)
    assert names(p.start) == ["b"] and names(p.wait) == ["a"]


def test_a_job_whose_status_says_its_job_was_created_never_starts_again():
    """After a restart its Job is gone (deleted, or removed by its TTL): no second Job."""
    p = plan([cand("a", 1, started=True), cand("b", 2)], [], budget=5)
    assert names(p.start) == ["b"] and p.wait == []
