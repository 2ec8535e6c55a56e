"""The one door to the Kubernetes API for the operator's own calls.

kopf does its own watching, finalizers and Events; everything else the operator asks of the
API server is a method here, and each method declares the RBAC access it needs with
``@needs(group, resource, verb)``. ``permissions.OPERATOR_NEEDS`` must equal the union of those
declarations (tested), and no other module imports the ``kubernetes`` client (tested).

The ``kubernetes`` client is synchronous; calls run in worker threads (``asyncio.to_thread``) so
kopf's event loop never blocks. Bodies go over the wire as plain dicts (no model classes): the
manifests are built as dicts by :mod:`lipsync_operator.jobs`, and status patches are JSON merge
patches. ``calls`` counts requests per (group, resource, verb), for the metrics and the benchmark.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
from typing import Any, Awaitable, Callable, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException

from lipsync.spec import API_GROUP, PLURAL

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_DECLARED: dict[str, set[tuple[str, str, str]]] = {}


def needs(group: str, resource: str, verb: str, *, also: tuple[tuple[str, str, str], ...] = ()) -> Callable[[F], F]:
    """Declare the RBAC access a method of :class:`Kube` uses (and count its calls).

    ``also``: further access the same request needs (e.g. an admission plugin's check).
    """

    def deco(fn: F) -> F:
        _DECLARED[fn.__name__] = {(group, resource, verb), *also}

        @functools.wraps(fn)
        async def wrapper(self: "Kube", *args: Any, **kwargs: Any) -> Any:
            self.calls[group, resource, verb] += 1
            return await fn(self, *args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco


def declared_access() -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) some method of :class:`Kube` declares."""
    return set().union(*_DECLARED.values())


class KubeError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"HTTP {status} {reason}: {body[:500]}")
        self.status = status
        self.reason = reason
        self.body = body


def load_client_config() -> kubernetes.client.Configuration:
    """In-cluster service account if present, else the kubeconfig (``$KUBECONFIG``)."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None,
                                           client_configuration=config)
    config.connection_pool_maxsize = 16  # the to_thread workers share it
    return config


def connection_info(config: kubernetes.client.Configuration | None = None) -> dict[str, Any]:
    """kopf's ConnectionInfo fields from the same client configuration the operator uses.

    So kopf and the operator authenticate the same way, and ``$KUBECONFIG`` is read when the
    operator logs in (kopf's own ``login_via_client`` uses the client's default path, which the
    ``kubernetes`` package fixes from ``$KUBECONFIG`` when it is first imported).
    """
    config = config or load_client_config()
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return dict(
        server=config.host, ca_path=config.ssl_ca_cert, insecure=not config.verify_ssl,
        username=config.username or None, password=config.password or None, scheme=scheme, token=token,
        certificate_path=config.cert_file, private_key_path=config.key_file,
    )


class Kube:
    """Async facade over ``kubernetes.client.ApiClient``; one instance per operator process."""

    def __init__(self, config: kubernetes.client.Configuration | None = None, *, timeout: float = 30) -> None:
        self._api = kubernetes.client.ApiClient(config or load_client_config())
        self._timeout = timeout
        self.calls: collections.Counter[tuple[str, str, str]] = collections.Counter()

    def close(self) -> None:
        self._api.close()

    # ------------------------------------------------------------------ transport
    def _call(self, method: str, path: str, *, query: dict[str, Any] | None = None,
              body: Any = None, content_type: str = "application/json", raw: bool = False) -> Any:
        try:
            resp = self._api.call_api(
                path, method,
                query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=self._timeout,
            )
        except ApiException as e:
            raise KubeError(e.status or 0, e.reason or "", e.body.decode() if isinstance(e.body, bytes) else str(e.body or "")) from None
        data = resp.data.decode("utf-8", "replace")
        return data if raw else (json.loads(data) if data else {})

    async def _acall(self, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self._call, *args, **kwargs)

    # ------------------------------------------------------------------ batch/v1 Jobs
    # blockOwnerDeletion on the Job's ownerReference: where the OwnerReferencesPermissionEnforcement
    # admission plugin is on (OpenShift), setting it needs update on the owner's finalizers.
    @needs("batch", "jobs", "create", also=((API_GROUP, f"{PLURAL}/finalizers", "update"),))
    async def create_job(self, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
        return await self._acall("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body=manifest)

    @needs("batch", "jobs", "get")
    async def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._acall("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}")
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    @needs("batch", "jobs", "delete")
    async def delete_job(self, namespace: str, name: str) -> bool:
        """Delete with propagationPolicy Background (its pods follow); False if already gone."""
        try:
            await self._acall(
                "DELETE", f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}",
                body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"},
            )
            return True
        except KubeError as e:
            if e.status == 404:
                return False
            raise

    # ------------------------------------------------------------------ core/v1 pods
    @needs("", "pods", "list")
    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        data = await self._acall("GET", f"/api/v1/namespaces/{namespace}/pods",
                                 query={"labelSelector": label_selector})
        return list(data.get("items") or [])

    @needs("", "pods/log", "get")
    async def read_pod_log(self, namespace: str, name: str, *, tail_lines: int = 50,
                           container: str | None = None) -> str:
        try:
            return await self._acall("GET", f"/api/v1/namespaces/{namespace}/pods/{name}/log",
                                     query={"tailLines": tail_lines, "container": container}, raw=True)
        except KubeError as e:
            if e.status in (400, 404):  # container not started yet / pod gone
                return ""
            raise

    # ------------------------------------------------------------------ LipSyncJob status
    @needs(API_GROUP, f"{PLURAL}/status", "patch")
    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
        """JSON-merge-patch ``.status`` through the status subresource; None if the object is gone."""
        try:
            return await self._acall(
                "PATCH", f"/apis/{API_GROUP}/v1alpha1/namespaces/{namespace}/{PLURAL}/{name}/status",
                body={"status": status}, content_type="application/merge-patch+json",
            )
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    # ------------------------------------------------------------------ leader election
    @needs("coordination.k8s.io", "leases", "get")
    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._acall("GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    @needs("coordination.k8s.io", "leases", "create")
    async def create_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        return await self._acall("POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body=lease)

    @needs("coordination.k8s.io", "leases", "patch")
    async def patch_lease(self, namespace: str, name: str, resource_version: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the Lease's spec with ``metadata.resourceVersion`` as a precondition: the API
        server answers 409 if another replica wrote the Lease since it was read."""
        return await self._acall(
            "PATCH", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}",
            body={"metadata": {"resourceVersion": resource_version}, "spec": spec},
            content_type="application/merge-patch+json")
