"""queue.py: the GPU budget decision (pure)."""

from __future__ import annotations

from lipsync_operator.queue import Candidate, JobFact, plan


def cand(name, t, gpu=True, **kw):
    return Candidate(namespace="ns", name=name, uid=f"uid-{name}", created=f"2026-01-01T00:00:{t:02d}Z", gpu=gpu, **kw)


def fact(name, gpu=True, finished=False):
    return JobFact(namespace="ns", name=f"lipsync-{name}", owner=name, uid=f"uid-{name}", gpu=gpu, finished=finished)


def names(cs):
    return [c.name for c in cs]


def test_at_most_budget_oldest_first_then_first_seen_never_by_name():
    # b2 and b1 were created in the same second (creationTimestamp has whole seconds); b2 first.
    cs = [cand("c", 3), cand("a", 1), cand("b2", 2, arrival="2026-01-01T00:00:02.100000Z"),
          cand("b1", 2, arrival="2026-01-01T00:00:02.300000Z"), cand("d", 4)]
    p = plan(cs, [], budget=2)
    assert names(p.start) == ["a", "b2"]
    assert names(p.wait) == ["b1", "c", "d"]


def ns_cand(ns, name, t):
    return Candidate(namespace=ns, name=name, uid=f"uid-{ns}-{name}", created=f"2026-01-01T00:{t // 60:02d}:{t % 60:02d}Z",
                     gpu=True)


def test_one_namespaces_backlog_does_not_hold_back_anothers_first_job():
    team_a = [ns_cand("a", f"j{i:03d}", i) for i in range(150)]
    late = ns_cand("b", "first", 200)
    running = [JobFact(namespace="a", name=f"lipsync-{c.name}", owner=c.name, uid=c.uid, gpu=True, finished=False)
               for c in team_a[:2]]
    p = plan(team_a[2:] + [late], running, budget=2)
    assert p.start == [] and p.wait[0] is late  # next in line
    running[0] = JobFact(**{**running[0].__dict__, "finished": True})  # a slot frees
    p = plan(team_a[2:] + [late], running, budget=2)
    assert p.start == [late]


def test_backlogged_namespaces_take_turns_fifo_within_each():
    cs = [ns_cand(ns, f"{ns}{i}", t) for t, (ns, i) in enumerate(
        [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("b", 2)])]
    p = plan(cs, [], budget=3)
    assert names(p.start) == ["a1", "b1", "c1"]
    assert names(p.wait) == ["a2", "b2", "a3"]


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
