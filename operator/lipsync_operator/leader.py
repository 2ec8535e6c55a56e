"""Leader election with a ``coordination.k8s.io/v1`` Lease: two or more replicas, one acts.

Every replica runs kopf (its watches keep the indexes warm, so a take-over needs no re-listing),
but only the holder of the Lease acts: reconciles, dispatches, progress polls and Events all
check :attr:`Controller.leading` (``controller.py``), and a replica that is not leading leaves
the cluster alone. The algorithm is client-go's ``leaderelection``:

* the holder renews ``spec.renewTime`` every ``duration / 3`` seconds, by a patch carrying the
  ``resourceVersion`` it read as a precondition (two writers cannot both win: the second gets 409);
* another replica takes the Lease over only when the record it observed has not changed for
  ``leaseDurationSeconds`` by its *own* clock (no comparison of clocks between nodes);
* a holder that could not renew for two thirds of ``duration`` stops acting, before anyone else
  may take over (a challenger waits ``duration`` from when it saw the holder's last renewal).

Configured by ``LIPSYNC_LEASE_NAMESPACE`` (the chart sets the release namespace; unset: no leader
election, the replica always acts), ``LIPSYNC_LEASE_NAME`` and ``LIPSYNC_LEASE_SECONDS`` (15).
The identity is ``$POD_NAME`` (the chart sets it from the downward API) or the host name, plus a
random suffix, so a restarted pod is a new candidate.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import uuid
from typing import Any

from .kube import Kube, KubeError

log = logging.getLogger("lipsync_operator")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def identity() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class Elector:
    def __init__(self, kube: Kube, namespace: str, name: str, duration: float, leading: asyncio.Event,
                 me: str | None = None) -> None:
        self.kube, self.namespace, self.name, self.duration = kube, namespace, name, duration
        self.leading = leading
        self.me = me or identity()
        self._observed: tuple[Any, float] | None = None  # (record, loop time first seen)
        self._renewed = 0.0  # loop time of our last successful write

    def _spec(self, transitions: int, acquired: str | None) -> dict[str, Any]:
        now = _now()
        return {"holderIdentity": self.me, "leaseDurationSeconds": max(1, int(round(self.duration))),
                "acquireTime": acquired or now, "renewTime": now, "leaseTransitions": transitions}

    async def step(self) -> bool:
        """One try to acquire or renew; True if this replica holds the Lease now."""
        loop = asyncio.get_running_loop()
        lease = await self.kube.read_lease(self.namespace, self.name)
        if lease is None:
            try:
                await self.kube.create_lease(self.namespace, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(0, None)})
            except KubeError as e:
                if e.status == 409:  # another replica created it first
                    return False
                raise
            self._renewed = loop.time()
            return True
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseTransitions"))
        if self._observed is None or self._observed[0] != record:
            self._observed = (record, loop.time())
        holder = spec.get("holderIdentity")
        mine = holder == self.me
        expired = loop.time() - self._observed[1] >= float(spec.get("leaseDurationSeconds") or self.duration)
        if not (mine or not holder or expired):
            return False
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        rv = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        try:
            await self.kube.patch_lease(self.namespace, self.name, rv,
                                        self._spec(transitions, spec.get("acquireTime") if mine else None))
        except KubeError as e:
            if e.status == 409:  # someone else renewed or took it meanwhile
                return False
            raise
        self._renewed = loop.time()
        if not mine:
            log.info("took over the Lease %s/%s from %s", self.namespace, self.name, holder or "nobody")
        return True

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                held = await self.step()
            except Exception as e:  # the API server is unreachable: keep what we had until it expires
                log.warning("Lease %s/%s: %s", self.namespace, self.name, e)
                held = self.leading.is_set() and loop.time() - self._renewed < self.duration * 2 / 3
            if held and not self.leading.is_set():
                log.info("leading (Lease %s/%s, identity %s)", self.namespace, self.name, self.me)
                self.leading.set()
            elif not held and self.leading.is_set():
                log.warning("no longer leading (Lease %s/%s): standing by", self.namespace, self.name)
                self.leading.clear()
            await asyncio.sleep(self.duration / 3 if held else self.duration / 6)
