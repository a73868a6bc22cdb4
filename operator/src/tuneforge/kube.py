"""The operator's only door to the Kubernetes API (besides Kopf's own watches and events), for
both kinds: FineTuneJob children (Jobs, ConfigMaps) and ModelServe children (color Deployments,
Services, the PDB and HPA, gate Jobs, version ConfigMaps, InferencePools), as plain dicts.

Calls go through lightkube's async client: no thread pool, and its models load per API group,
where the official ``kubernetes`` client imports every generated model (~45 MB of RSS). At most
``Settings.api_concurrency`` requests are in flight at once, so a thousand FineTuneJobs never
mean a thousand open requests. Creating treats AlreadyExists as success and deleting treats
NotFound as success: deterministic names make every call idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, TypeVar

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig, codecs, operators
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, PersistentVolumeClaim, Pod, Secret, Service
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.resources.scheduling_v1 import PriorityClass
from lightkube.types import CascadeType, PatchType

from . import FTJ_PLURAL, GROUP, MS_PLURAL, VERSION
from .leader import FENCE, Conflict, LeaseRecord
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
FIELD_MANAGER = "tuneforge-operator"
FineTuneJob = create_namespaced_resource(GROUP, VERSION, "FineTuneJob", FTJ_PLURAL)
ModelServe = create_namespaced_resource(GROUP, VERSION, "ModelServe", MS_PLURAL)
InferencePool = create_namespaced_resource("inference.networking.k8s.io", "v1", "InferencePool", "inferencepools")
ScaledObject = create_namespaced_resource("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects")
KINDS: dict[str, Any] = {
    "Deployment": Deployment, "Service": Service, "Job": Job, "ConfigMap": ConfigMap, "Pod": Pod,
    "PodDisruptionBudget": PodDisruptionBudget, "HorizontalPodAutoscaler": HorizontalPodAutoscaler,
    "InferencePool": InferencePool, "ScaledObject": ScaledObject, "FineTuneJob": FineTuneJob,
}
"""The kinds the ModelServe room reads and writes, by ``kind``."""
STATUS: dict[str, Any] = {"FineTuneJob": FineTuneJob.Status, "ModelServe": ModelServe.Status}
"""The status subresources ``write_status`` writes, by ``kind``."""


class ForeignChild(Exception):
    """A child's deterministic name is taken by an object its owner (a FineTuneJob or a
    ModelServe) does not control."""

    def __init__(self, kind: str, namespace: str, name: str, controller_uid: str | None,
                 owner_kind: str = "owner") -> None:
        self.kind, self.namespace, self.name, self.controller_uid = kind, namespace, name, controller_uid
        whose = f"is controlled by another object (uid {controller_uid})" if controller_uid else "has no controller"
        super().__init__(f"{kind} {namespace}/{name} already exists and {whose}, not this {owner_kind}: "
                         f"delete it (or rename the {owner_kind}) and it continues")


def _controller_uid(owner_references: Any) -> str | None:
    for ref in owner_references or ():
        controller = ref.get("controller") if isinstance(ref, dict) else ref.controller
        if controller:
            return str(ref["uid"] if isinstance(ref, dict) else ref.uid)
    return None


class Kube:
    """Async wrappers over the few API calls the operator makes."""

    def __init__(self, settings: Settings, kubeconfig: str | None = None) -> None:
        # In-cluster service account first, then KUBECONFIG / ~/.kube/config (as Kopf's login).
        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        self._client = AsyncClient(config, timeout=httpx2.Timeout(settings.request_timeout),
                                   field_manager=FIELD_MANAGER)
        self._slots = asyncio.Semaphore(settings.api_concurrency)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async with self._slots:
            FENCE.check()  # after the wait for a slot: a replica past its leader deadline sends nothing
            return await fn(*args, **kwargs)

    async def close(self) -> None:
        await self._client.close()

    async def create(self, obj: dict[str, Any]) -> bool:
        """Create a ConfigMap or Job; False when it already existed under the same controller.

        AlreadyExists is success only when the existing object's controller reference is the
        one ``obj`` carries (the FineTuneJob's uid); otherwise ``ForeignChild`` is raised, so a
        leftover of a deleted namesake is never adopted.
        """
        res = codecs.from_dict(obj)
        try:
            await self._call(self._client.create, res)
            return True
        except ApiError as exc:
            if exc.status.code != 409:
                raise
        meta = obj["metadata"]
        existing = await self._call(self._client.get, type(res), meta["name"], namespace=meta["namespace"])
        theirs = _controller_uid(existing.metadata.ownerReferences if existing.metadata else None)
        if theirs != _controller_uid(meta.get("ownerReferences")):
            mine: dict[str, Any] = next((r for r in meta.get("ownerReferences") or () if r.get("controller")), {})
            raise ForeignChild(obj["kind"], meta["namespace"], meta["name"], theirs, mine.get("kind") or "owner")
        return False

    async def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and (in the background) its pods; NotFound is success."""
        try:
            await self._call(self._client.delete, Job, name, namespace=namespace, cascade=CascadeType.BACKGROUND)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    async def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        await self._call(self._client.patch, Job, name, {"spec": {"suspend": suspend}}, namespace=namespace,
                         patch_type=PatchType.MERGE)

    async def write_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Replace a FineTuneJob's or ModelServe's whole status subresource (a JSON patch adding
        ``/status``: no key the new status dropped survives, as it would a merge patch, and no
        diff against a possibly stale copy is needed); NotFound is success (deleted meanwhile)."""
        try:
            await self._call(self._client.patch, STATUS[kind], name, [{"op": "add", "path": "/status", "value": status}],
                             namespace=namespace, patch_type=PatchType.JSON)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    async def pod_log_tail(self, namespace: str, pod: str, container: str, lines: int) -> str:
        """The last lines of a container's log (read-only pods/log)."""

        async def read() -> str:
            return "".join([line async for line in self._client.log(pod, namespace=namespace, container=container,
                                                                     tail_lines=lines)])

        try:
            return await self._call(read)
        except ApiError as exc:
            if exc.status.code in (400, 404):  # not started yet, or gone
                return ""
            raise

    async def pvc_exists(self, namespace: str, name: str) -> bool:
        return await self._exists(PersistentVolumeClaim, name, namespace=namespace)

    async def config_map_keys(self, namespace: str, name: str) -> set[str] | None:
        """The keys of a ConfigMap (data and binaryData), or None when it does not exist."""
        cm = await self._get_or_none(ConfigMap, name, namespace=namespace)
        return None if cm is None else set(cm.data or {}) | set(cm.binaryData or {})

    async def secret_annotations(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's annotations (its opt-in for user-chosen endpoints), or None when it does
        not exist. Only the annotations leave this method; the values are never kept or logged."""
        secret = await self._get_or_none(Secret, name, namespace=namespace)
        if secret is None:
            return None
        return dict((secret.metadata.annotations if secret.metadata else None) or {})

    async def priority_class_exists(self, name: str) -> bool:
        return await self._exists(PriorityClass, name)

    # --- ModelServe children (plain dicts in and out) --------------------------------------

    async def list_labelled(self, kind: str, namespace: str, labels: dict[str, str | None]) -> list[dict[str, Any]]:
        """Objects of ``kind`` in ``namespace`` carrying ``labels`` (a None value: the label exists)."""
        selector: dict[str, Any] = {k: (operators.exists() if v is None else v) for k, v in labels.items()}

        async def collect() -> list[dict[str, Any]]:
            return [o.to_dict() async for o in self._client.list(KINDS[kind], namespace=namespace, labels=selector)]

        return await self._call(collect)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object as a dict; None when it does not exist."""
        try:
            obj = await self._call(self._client.get, KINDS[kind], name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        return obj.to_dict()  # type: ignore[no-any-return]

    async def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply of a whole object we own (create or converge it), forcing our fields."""
        meta = obj["metadata"]
        await self._call(self._client.patch, KINDS[obj["kind"]], meta["name"], obj, namespace=meta["namespace"],
                         patch_type=PatchType.APPLY, field_manager=FIELD_MANAGER, force=True)

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self._call(self._client.patch, KINDS[kind], name, patch, namespace=namespace, patch_type=PatchType.MERGE)

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete an object (dependents in the background); NotFound is success."""
        try:
            await self._call(self._client.delete, KINDS[kind], name, namespace=namespace, cascade=CascadeType.BACKGROUND)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    async def job_termination_message(self, namespace: str, job: str, container: str) -> str | None:
        """The termination message of ``container`` in a finished pod of ``job`` (None: none yet);
        a Succeeded pod's first (a retried Job's disrupted pod left its log tail as its message)."""
        pods = await self.list_labelled("Pod", namespace, {"batch.kubernetes.io/job-name": job})
        for pod in sorted(pods, key=lambda p: (p.get("status") or {}).get("phase") != "Succeeded"):
            for cs in (pod.get("status") or {}).get("containerStatuses") or ():
                message = ((cs.get("state") or {}).get("terminated") or {}).get("message")
                if cs.get("name") == container and message:
                    return str(message)
        return None

    async def list_if_served(self, kind: str, namespace: str, labels: dict[str, str | None]) -> list[dict[str, Any]] | None:
        """As ``list_labelled``, or None when the API does not serve ``kind`` (an optional CRD
        such as InferencePool is not installed): one call answers both."""
        try:
            return await self.list_labelled(kind, namespace, labels)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise
        except httpx2.HTTPStatusError as exc:
            # An API group that is not served answers a plain-text "404 page not found", which
            # lightkube's list raises as the HTTP error itself rather than an ApiError.
            if exc.response.status_code == 404:
                return None
            raise

    async def _exists(self, res: Any, name: str, **kwargs: Any) -> bool:
        return await self._get_or_none(res, name, **kwargs) is not None

    async def _get_or_none(self, res: Any, name: str, **kwargs: Any) -> Any:
        """The object, or None when it does not exist."""
        try:
            return await self._call(self._client.get, res, name, **kwargs)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise


def is_transient(exc: BaseException) -> bool:
    """Errors worth a retry: throttling, conflicts, server-side and network trouble."""
    if isinstance(exc, ApiError):
        code = exc.status.code or 0
        return code in (0, 409, 429) or code >= 500
    return isinstance(exc, (httpx2.TransportError, OSError, TimeoutError))


def api_error_message(exc: BaseException) -> str:
    """A one-line message for an API error (the apiserver's own message when it has one)."""
    if isinstance(exc, ApiError):
        return str(exc.status.message or exc.status.reason or exc)
    return str(exc) or type(exc).__name__


class LeaseLock:
    """The leader election's Lease (``leader.LeaseStore``): get, create, and replace with the
    resourceVersion it was read at (optimistic concurrency: a 409 is ``leader.Conflict``). Its own
    client: renewals must never queue behind the reconcilers' request slots."""

    def __init__(self, settings: Settings, kubeconfig: str | None = None) -> None:
        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
        self.name = settings.leader_election_lease
        # Short requests: a renewal that hangs must not outlast the renew deadline unnoticed.
        timeout = min(settings.request_timeout, settings.leader_election_retry_period * 2)
        self._client = AsyncClient(config, timeout=httpx2.Timeout(timeout), field_manager=FIELD_MANAGER)
        self.namespace = settings.leader_election_namespace or self._client.namespace

    @staticmethod
    def _record(lease: Any) -> LeaseRecord:
        spec = lease.spec or LeaseSpec()
        return LeaseRecord(holder=spec.holderIdentity or "", duration_s=spec.leaseDurationSeconds or 0,
                           acquire_time=spec.acquireTime, renew_time=spec.renewTime,
                           transitions=spec.leaseTransitions or 0, resource_version=lease.metadata.resourceVersion or "")

    @staticmethod
    def _spec(record: LeaseRecord) -> LeaseSpec:
        return LeaseSpec(holderIdentity=record.holder or None, leaseDurationSeconds=record.duration_s,
                         acquireTime=record.acquire_time, renewTime=record.renew_time,
                         leaseTransitions=record.transitions)

    async def get(self) -> LeaseRecord | None:
        try:
            return self._record(await self._client.get(Lease, self.name, namespace=self.namespace))
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        lease = Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace), spec=self._spec(record))
        return await self._write(self._client.create(lease))

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        lease = Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace,
                                          resourceVersion=record.resource_version),
                      spec=self._spec(record))
        return await self._write(self._client.replace(lease))

    async def _write(self, request: Awaitable[Any]) -> LeaseRecord:
        """The Lease as written; a 409 (another writer was first: AlreadyExists on create, a stale
        resourceVersion on replace) is ``leader.Conflict``."""
        try:
            return self._record(await request)
        except ApiError as exc:
            if exc.status.code == 409:
                raise Conflict(str(exc)) from exc
            raise

    async def close(self) -> None:
        await self._client.close()
