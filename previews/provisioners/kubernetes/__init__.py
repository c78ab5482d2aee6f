"""The Kubernetes provisioner: each session's sandbox is a namespace of its own.

A namespace per session makes teardown one call (deleting the namespace deletes everything in it)
and gives each session its own NetworkPolicy, ResourceQuota and LimitRange, so nothing one
sandbox does reaches another. In it: a default-deny NetworkPolicy that lets in the platform's
web pods on the service port only, and lets out nothing but object storage on the presigned
URLs' port (no platform, no DNS: the storage host is resolved by the worker and given to the
Pod as hostAliases); a Pod that runs the material's command as an unprivileged user on a
read-only root file system; a Service ``preview`` in front of it, which the platform's web
pods proxy to.

The Pod never sees the platform's storage credentials: an init container downloads each file
of the material from a presigned URL (listed in a ConfigMap only the init container mounts),
checks its SHA-256 and size, and leaves it in an emptyDir the main container mounts read-only
at ``/preview``. That needs a storage with presigned URLs (S3); on local files a session with
material fails with a clear reason.

`objects` builds the objects from the settings and the request, before any call; `fetch` is
the init container's program. It never touches the database (previews.provisioners.base).
docs/previews-kubernetes.md is the reference: what is made and why, the settings, the RBAC the
platform's service account needs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as kube
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from previews.provisioners.base import Environment, ProvisionFailed, Running, StartRequest
from previews.provisioners.kubernetes.objects import (
    LABEL_EXPIRES,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    POD_NAME,
    PORT,
    SERVICE_NAME,
    KubeConfig,
    namespace_name,
    sandbox_plan,
)

logger = logging.getLogger(__name__)

# Waiting reasons that never clear by themselves: failing at once says why, sooner.
PERMANENT_WAITING = frozenset(
    {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"}
)


class KubernetesApiError(Exception):
    """The Kubernetes API could not be reached or refused a call outside `start` (teardown,
    listing): the caller retries later. The message names the call and the answer."""


# --- the API ----------------------------------------------------------------------------------


def _api_error(exc: BaseException) -> str:
    """An API failure said in one line: the status and the API's own message."""
    if isinstance(exc, ApiException):
        message = ""
        try:
            message = json.loads(exc.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            message = (exc.body or "")[:200]
        return f"{exc.status} {exc.reason}" + (f": {message}" if message else "")
    return f"{type(exc).__name__}: {exc}"


# What a call to the API can raise besides a bug: an answer that is not 2xx, a connection that
# fails or times out (urllib3), a token or CA file that cannot be read, no configuration at all.
API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError, ConfigException)


def api_client(config: KubeConfig) -> kube.ApiClient:
    """A client for the configured API: MARKETPLACE_PREVIEW_KUBE_API_URL with the token and CA
    files, else the Pod's own service account (in-cluster), else ~/.kube/config."""
    configuration = kube.Configuration()
    if config.api_url:
        configuration.host = config.api_url.rstrip("/")
        if config.ca_file:
            configuration.ssl_ca_cert = config.ca_file
        if config.token_file:
            token_path = Path(config.token_file)

            # Read before every request: a projected service-account token is rotated in place.
            def _token(conf: kube.Configuration) -> None:
                conf.api_key["authorization"] = token_path.read_text().strip()

            # The key has to be there for the client to send the header at all; the hook
            # fills it in.
            configuration.api_key = {"authorization": ""}
            configuration.api_key_prefix = {"authorization": "Bearer"}
            configuration.refresh_api_key_hook = _token
    else:
        try:
            kube_config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            kube_config.load_kube_config(client_configuration=configuration)
    # One more try on a connection refused or reset (an API server restarting), never a request
    # sent twice: a second POST would answer 409.
    configuration.retries = urllib3.Retry(total=1, read=0, status=0, redirect=0, backoff_factor=0.2)
    return kube.ApiClient(configuration)


class KubernetesProvisioner:
    name = "kubernetes"

    def __init__(self) -> None:
        self.config = KubeConfig.from_settings()
        self._client: kube.ApiClient | None = None

    @property
    def core(self) -> kube.CoreV1Api:
        return kube.CoreV1Api(self._api())

    @property
    def networking(self) -> kube.NetworkingV1Api:
        return kube.NetworkingV1Api(self._api())

    def _api(self) -> kube.ApiClient:
        if self._client is None:
            self._client = api_client(self.config)
        return self._client

    def _namespace(self, environment_id: str) -> str | None:
        return namespace_name(self.config.namespace_prefix, environment_id)

    # --- start -------------------------------------------------------------------------------

    def start(self, request: StartRequest, *, timeout: float) -> Environment:
        began = time.monotonic()
        plan = sandbox_plan(request, self.config, now=time.time(), timeout=timeout)
        namespace = plan.namespace
        t = self.config.timeout
        try:
            self.core.create_namespace(plan.namespace_manifest(), _request_timeout=t)
        except API_ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 409:
                # Another start of this id made it (or its teardown is not finished): it is
                # not ours to delete, and the collector ends whatever is left of it.
                raise ProvisionFailed(f"the namespace {namespace} exists already") from exc
            # A create that timed out or failed late may still have happened.
            self._discard(namespace)
            raise ProvisionFailed(
                f"the Kubernetes API could not create the namespace {namespace}: {_api_error(exc)}"
            ) from exc
        core, networking = self.core, self.networking
        # In this order: the policy and the limits are in force before anything can run.
        creates: list[tuple[str, Callable[..., object], dict[str, Any]]] = [
            (
                "NetworkPolicy",
                networking.create_namespaced_network_policy,
                plan.network_policy_manifest(),
            ),
            (
                "ResourceQuota",
                core.create_namespaced_resource_quota,
                plan.resource_quota_manifest(),
            ),
            ("LimitRange", core.create_namespaced_limit_range, plan.limit_range_manifest()),
            ("ConfigMap", core.create_namespaced_config_map, plan.config_map_manifest()),
            ("Service", core.create_namespaced_service, plan.service_manifest()),
            ("Pod", core.create_namespaced_pod, plan.pod_manifest()),
        ]
        try:
            for kind, create, body in creates:
                try:
                    create(namespace, body, _request_timeout=t)
                except API_ERRORS as exc:
                    raise ProvisionFailed(
                        f"the Kubernetes API could not create the {kind} in {namespace}: "
                        f"{_api_error(exc)}"
                    ) from exc
            self._wait_ready(namespace, deadline=began + timeout, timeout=timeout)
        except ProvisionFailed as exc:
            raise ProvisionFailed(exc.detail + self._discard(namespace)) from exc
        except BaseException:
            self._discard(namespace)
            raise
        logger.info("preview sandbox %s started in namespace %s", request.environment_id, namespace)
        return Environment(
            environment_id=request.environment_id,
            endpoint=f"http://{SERVICE_NAME}.{namespace}.svc:{PORT}",
            host=namespace,
        )

    def _discard(self, namespace: str) -> str:
        """Deletes a namespace that failed to start; '' or what to add to the failure's detail
        (the collector finds a namespace left behind by its labels)."""
        try:
            self._delete_namespace(namespace)
        except KubernetesApiError as exc:
            logger.warning("preview namespace %s left behind: %s", namespace, exc)
            return f" (and the namespace could not be deleted: {exc})"
        return ""

    def _wait_ready(self, namespace: str, *, deadline: float, timeout: float) -> None:
        """Polls the Pod until it runs and is Ready; raises ProvisionFailed when it fails or the
        deadline passes (saying the last thing that held it up)."""
        pause = 0.2
        waiting = "the Pod was not seen"
        while True:
            try:
                pod = self.core.read_namespaced_pod(
                    POD_NAME, namespace, _request_timeout=self.config.timeout
                )
            except API_ERRORS as exc:
                waiting = f"the Pod could not be read: {_api_error(exc)}"
            else:
                state, why = pod_state(pod)
                if state == "ready":
                    return
                if state == "failed":
                    raise ProvisionFailed(f"the sandbox failed to start: {why}")
                waiting = why
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProvisionFailed(f"the sandbox was not ready within {timeout:g} s: {waiting}")
            time.sleep(min(pause, remaining))
            pause = min(pause * 1.5, 1.0)

    # --- teardown, alive, running ------------------------------------------------------------

    def _delete_namespace(self, namespace: str) -> bool:
        try:
            self.core.delete_namespace(
                namespace, propagation_policy="Background", _request_timeout=self.config.timeout
            )
        except API_ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return False
            if isinstance(exc, ApiException) and exc.status == 409:
                return True  # already being deleted: the namespace controller finishes it
            raise KubernetesApiError(
                f"deleting the namespace {namespace} failed: {_api_error(exc)}"
            ) from exc
        return True

    def teardown(self, environment_id: str) -> bool:
        """Deletes the session's namespace (and with it everything in it, in the background).

        Raises KubernetesApiError when the API cannot be reached or refuses: the caller tries
        again later (the teardown task retries; the sweep and the collector come back).
        """
        namespace = self._namespace(environment_id)
        if namespace is None:
            return False  # no namespace can have that name
        found = self._delete_namespace(namespace)
        if found:
            logger.info("preview namespace %s deleted", namespace)
        return found

    def alive(self, environment_id: str) -> bool | None:
        namespace = self._namespace(environment_id)
        if namespace is None:
            return False
        try:
            pod = self.core.read_namespaced_pod(
                POD_NAME, namespace, _request_timeout=self.config.timeout
            )
        except API_ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return False
            return None
        if pod.metadata is not None and pod.metadata.deletion_timestamp is not None:
            return False
        return pod.status is not None and pod.status.phase in ("Pending", "Running")

    def running(self) -> list[Running]:
        """The namespaces this platform made (its label and its prefix: another platform on the
        same cluster has another prefix), less those already being deleted.

        Raises KubernetesApiError when the API cannot be reached or refuses.
        """
        found: list[Running] = []
        prefix = self.config.namespace_prefix
        token: str | None = None
        while True:
            try:
                page = self.core.list_namespace(
                    label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}",
                    limit=500,
                    _continue=token,
                    _request_timeout=self.config.timeout,
                )
            except API_ERRORS as exc:
                raise KubernetesApiError(
                    f"listing the preview namespaces failed: {_api_error(exc)}"
                ) from exc
            for item in page.items:
                name = item.metadata.name or ""
                if not name.startswith(prefix):
                    continue
                if item.status is not None and item.status.phase == "Terminating":
                    continue
                expires = (item.metadata.labels or {}).get(LABEL_EXPIRES, "")
                found.append(
                    Running(
                        environment_id=name[len(prefix) :],
                        expires_at=float(expires) if expires.isdigit() else None,
                    )
                )
            token = page.metadata.var_continue if page.metadata is not None else None
            if not token:
                return found


def pod_state(pod: kube.V1Pod) -> tuple[str, str]:
    """("ready" | "failed" | "waiting", why) for a Pod read from the API."""
    status = pod.status
    if status is None:
        return "waiting", "the Pod has no status yet"
    statuses = [
        *((f"init container {s.name}", s) for s in status.init_container_statuses or []),
        *((f"container {s.name}", s) for s in status.container_statuses or []),
    ]
    if status.phase in ("Failed", "Succeeded"):
        reasons = []
        for what, container in statuses:
            ended = container.state.terminated if container.state else None
            # A failure names the containers that failed; a command that exited 0 is named too
            # (a sandbox must keep serving), an init container that completed is not.
            exited = ended is not None and (
                ended.exit_code != 0 or not what.startswith("init container")
            )
            if exited:
                said = (ended.message or "").strip()[-300:]
                reasons.append(
                    f"{what} exited with status {ended.exit_code}"
                    + (f" ({ended.reason})" if ended.reason else "")
                    + (f": {said}" if said else "")
                )
        if status.reason or status.message:
            reasons.append(f"{status.reason or ''} {status.message or ''}".strip())
        return "failed", "; ".join(reasons) or f"the Pod is {status.phase}"
    for what, container in statuses:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason in PERMANENT_WAITING:
            return "failed", f"{what}: {waiting.reason}: {waiting.message or ''}".strip()
    conditions = {c.type: c for c in status.conditions or []}
    ready = conditions.get("Ready")
    if status.phase == "Running" and ready is not None and ready.status == "True":
        return "ready", ""
    for what, container in statuses:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason:
            return "waiting", f"{what}: {waiting.reason}: {waiting.message or ''}".strip(" :")
    scheduled = conditions.get("PodScheduled")
    if scheduled is not None and scheduled.status == "False":
        return "waiting", f"not scheduled: {scheduled.reason or ''} {scheduled.message or ''}"
    if status.phase == "Running":
        return "waiting", "the command does not accept connections on port 8080 yet"
    return "waiting", f"the Pod is {status.phase or 'Pending'}"
