"""The operator's only door to the Kubernetes API (besides Kopf's own watches and events).

Blocking client calls run on a small, fixed thread pool (``Settings.api_concurrency``), so a
thousand FineTuneJobs never mean a thousand threads. Creating treats AlreadyExists as success
and deleting treats NotFound as success: deterministic names make every call idempotent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from typing import Any, Callable, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException

from . import FTJ_PLURAL, GROUP, VERSION
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"


class Kube:
    """Async wrappers over the few API calls the operator makes."""

    def __init__(self, settings: Settings, kubeconfig: str | None = None) -> None:
        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(config_file=kubeconfig)
        cfg = kubernetes.client.Configuration.get_default_copy()
        cfg.connection_pool_maxsize = max(settings.api_concurrency, 4)
        self._api = kubernetes.client.ApiClient(cfg)
        self.core = kubernetes.client.CoreV1Api(self._api)
        self.batch = kubernetes.client.BatchV1Api(self._api)
        self.custom = kubernetes.client.CustomObjectsApi(self._api)
        self.scheduling = kubernetes.client.SchedulingV1Api(self._api)
        self._timeout = settings.request_timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(settings.api_concurrency, thread_name_prefix="kube")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        kwargs.setdefault("_request_timeout", self._timeout)
        # Writes' responses are never used: skipping the client's model deserialisation saves
        # most of the CPU and garbage of a create or patch.
        kwargs.setdefault("_preload_content", False)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(_read_and_release, fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._api.close()

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create a ConfigMap or Job; False when it already existed."""
        ns = obj["metadata"]["namespace"]
        fn = {"ConfigMap": self.core.create_namespaced_config_map, "Job": self.batch.create_namespaced_job}[obj["kind"]]
        try:
            await self._call(fn, ns, obj)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and (in the background) its pods; NotFound is success."""
        try:
            await self._call(self.batch.delete_namespaced_job, name, namespace, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise

    async def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        await self._call(self.batch.patch_namespaced_job, name, namespace, {"spec": {"suspend": suspend}})

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the FineTuneJob's status subresource (None values delete keys)."""
        try:
            await self._call(
                self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, FTJ_PLURAL, name,
                {"status": status}, _content_type=MERGE_PATCH,
            )
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile
                raise

    async def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        """The last lines of a container's log (read-only pods/log)."""
        try:
            # Raw bytes: the client's own decoding json-parses a one-line log into a dict repr.
            data = await self._call(
                self.core.read_namespaced_pod_log, pod, namespace, container=container,
                tail_lines=lines, limit_bytes=64 * 1024,
            )
            return bytes(data).decode("utf-8", errors="replace")
        except ApiException as exc:
            if exc.status in (400, 404):  # not started yet, or gone
                return ""
            raise

    async def pvc_exists(self, namespace: str, name: str) -> bool:
        try:
            await self._call(self.core.read_namespaced_persistent_volume_claim, name, namespace)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    async def priority_class_exists(self, name: str) -> bool:
        try:
            await self._call(self.scheduling.read_priority_class, name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise


def _read_and_release(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call, then read the raw body and hand the connection back to the pool."""
    resp = fn(*args, **kwargs)
    if hasattr(resp, "release_conn"):
        try:
            return resp.data
        finally:
            resp.release_conn()
    return resp


def is_transient(exc: BaseException) -> bool:
    """Errors worth a retry: throttling, conflicts, server-side and network trouble."""
    if isinstance(exc, ApiException):
        return exc.status in (0, 409, 429) or exc.status >= 500
    return isinstance(exc, (OSError, TimeoutError, concurrent.futures.TimeoutError))


def api_error_message(exc: BaseException) -> str:
    """A one-line message for an API error (the apiserver's own message when it has one)."""
    if isinstance(exc, ApiException):
        import json
        try:
            return str(json.loads(exc.body or "{}").get("message") or exc.reason)
        except ValueError:
            return str(exc.reason)
    return str(exc)
