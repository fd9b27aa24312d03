"""Leader election over a coordination.k8s.io Lease: only the replica holding the Lease acts.

Every replica keeps watching (so a new leader starts with warm caches); the leader renews the
Lease every ``renew_seconds`` and another replica takes it over once it has gone unrenewed for
``duration_seconds``. Writes are optimistic (resourceVersion), so two replicas can never both
believe they hold it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import kubernetes
from kubernetes.client.rest import ApiException

from .kube import Kube

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class LeaderElection:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str,
                 duration_seconds: int = 15, renew_seconds: float = 5.0) -> None:
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.duration, self.renew = duration_seconds, renew_seconds
        self.leading = asyncio.Event()

    def _spec(self, acquired: datetime | None, transitions: int) -> kubernetes.client.V1LeaseSpec:
        now = _now()
        return kubernetes.client.V1LeaseSpec(
            holder_identity=self.identity, lease_duration_seconds=self.duration,
            acquire_time=acquired or now, renew_time=now, lease_transitions=transitions)

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True if this replica holds it afterwards."""
        coord = self.kube.coordination
        try:
            lease = await self.kube._call(coord.read_namespaced_lease, self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            body = kubernetes.client.V1Lease(
                metadata=kubernetes.client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(None, 0))
            try:
                await self.kube._call(coord.create_namespaced_lease, self.namespace, body)
                return True
            except ApiException as error:
                if error.status == 409:
                    return False
                raise
        spec = lease.spec
        mine = spec.holder_identity == self.identity
        expired = spec.renew_time is None or (
            spec.renew_time + timedelta(seconds=spec.lease_duration_seconds or self.duration) < _now())
        if not (mine or expired or not spec.holder_identity):
            return False
        transitions = (spec.lease_transitions or 0) + (0 if mine else 1)
        lease.spec = self._spec(spec.acquire_time if mine else None, transitions)
        try:
            await self.kube._call(coord.replace_namespaced_lease, self.name, self.namespace, lease)
            return True
        except ApiException as error:
            if error.status == 409:
                return False  # someone else wrote first
            raise

    async def run(self) -> None:
        """Keep trying to lead; set or clear :attr:`leading` accordingly."""
        while True:
            try:
                held = await self.try_acquire()
            except Exception as error:  # the API may be briefly unreachable; keep trying
                log.warning("leader election: %s", error)
                held = False
            if held and not self.leading.is_set():
                log.info("leading as %s", self.identity)
                self.leading.set()
            elif not held and self.leading.is_set():
                log.warning("lost the lease %s/%s", self.namespace, self.name)
                self.leading.clear()
            await asyncio.sleep(self.renew)
