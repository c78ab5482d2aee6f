"""A stand-in for the Kubernetes API: a plain HTTP server on loopback that speaks the paths the
official client calls for the preview provisioner, so the real client is tested against a real
socket, and that refuses what the real API server would refuse.

    /api/v1/namespaces[/{name}]                                   POST, GET (list), GET, DELETE
    /api/v1/namespaces/{ns}/{resourcequotas,limitranges,configmaps,services,pods}[/{name}]
    /apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies[/{name}]
    /api/v1/namespaces/{ns}/pods/{name}/status                    GET

Every object created is checked as the API server checks it, and answered as it answers:
- against the Kubernetes OpenAPI schema, strictly (no unknown field), of each version in
  checks.SCHEMA_VERSIONS (the schemas `kubernetes-validate` ships per Kubernetes release);
- by the API server's own rules the schema cannot say: names (DNS-1123), label keys and
  values, annotation keys, CIDRs, quantities, requests not above limits, a Pod's mounts naming
  its volumes, a ConfigMap under 1 MiB;
- by admission: Pod Security `restricted` where the namespace's
  `pod-security.kubernetes.io/enforce` label asks for it (403 Forbidden), ResourceQuota (403
  once a quota would be passed, or when a container sets no limit a quota tracks), a namespace
  being deleted takes no new objects (403);
- 201 with the stored object (uid, resourceVersion, creationTimestamp set), 409 AlreadyExists,
  404 NotFound `Status` objects, 422 Invalid with the causes, 401 without the bearer token.
Each refusal of the schema, the rules or admission is recorded in `violations`: the fixture
fails a test that leaves any, unless it sets `violations_expected`.

Deleting a namespace answers 200 with it `Terminating` and deletes what it holds; it is gone at
once, unless `keep_terminating` (then it stays Terminating, and deleting it again answers 409
Conflict, as the real API does until the namespace controller is done).

Pods: `pod_mode` decides what a created Pod does. "ready" (default): the first read shows it
Pending (its init container running), the next ones Running and Ready. "pending": it stays
Pending, its containers waiting with `waiting_reason`. "fail": its init container exits 1 (the
fetch failed). "crash": its main container exits 2. `pod_set(namespace, phase=..., ready=...)`
changes one at will.

What else a test controls: `down = True` answers 500 to everything; `fail_next(n, status,
method=..., path_contains=...)` scripts failures of matching requests; `refuse_connections()` /
`restore()` stop and resume listening on the same port. It reads `requests` (every one, with
its parsed body and the status answered), `objects(plural, namespace)` and `get(...)`.

Fixture `kube_api`: a fresh server for one test, the settings pointing the provisioner at it
(API URL, a token file, an image, storage CIDRs, short timeouts).
"""

from __future__ import annotations

import copy
import json
import re
import threading
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes.utils.quantity import parse_quantity

from tests.support.kube_api.checks import (
    pod_security_restricted,
    rule_problems,
    schema_problems,
)

DEFAULT_TOKEN = "kube-test-token"


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    api_version: str
    base: str  # the path the group and version are served under
    namespaced: bool = True
    name_rule: str = "subdomain"  # or "label"


RESOURCES = {
    r.plural: r
    for r in (
        Resource("namespaces", "Namespace", "v1", "/api/v1", namespaced=False, name_rule="label"),
        Resource("resourcequotas", "ResourceQuota", "v1", "/api/v1"),
        Resource("limitranges", "LimitRange", "v1", "/api/v1"),
        Resource("configmaps", "ConfigMap", "v1", "/api/v1"),
        Resource("services", "Service", "v1", "/api/v1", name_rule="label"),
        Resource("pods", "Pod", "v1", "/api/v1"),
        Resource(
            "networkpolicies", "NetworkPolicy", "networking.k8s.io/v1", "/apis/networking.k8s.io/v1"
        ),
    )
}

_NAMESPACED_PATH = re.compile(
    r"(?P<base>/api/v1|/apis/networking\.k8s\.io/v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>[a-z]+)"
    r"(?:/(?P<name>[^/]+)(?P<status>/status)?)?"
)
_NAMESPACE_PATH = re.compile(r"/api/v1/namespaces(?:/(?P<name>[^/]+))?")


@dataclass(frozen=True)
class KubeReply:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True)
class KubeRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None
    status: int  # what the stand-in answered


@dataclass
class _Failure:
    status: int
    method: str | None
    path_contains: str | None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A `Status` as the API answers errors (and some deletes) with."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success" if code < 400 else "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def _error(code: int, reason: str, message: str, **details: Any) -> KubeReply:
    return KubeReply(code, status_object(code, reason, message, details or None))


def _not_found(plural: str, name: str) -> KubeReply:
    return _error(404, "NotFound", f'{plural} "{name}" not found', name=name, kind=plural)


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


# --- the server --------------------------------------------------------------------------------


class KubeApiServer:
    def __init__(self, *, token: str = DEFAULT_TOKEN, port: int = 0) -> None:
        self.token = token
        self.down = False
        self.keep_terminating = False
        self.pod_mode = "ready"
        self.waiting_reason = "ContainerCreating"
        self.violations_expected = False
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._pod_reads: dict[tuple[str, str], int] = {}
        self._failures: list[_Failure] = []
        self._requests: list[KubeRequest] = []
        self._violations: list[str] = []
        self._errors: list[str] = []
        self._version = 1000
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = port

    # Lifecycle.

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        http = _KubeHttpServer(("127.0.0.1", self._port), self)
        self._port = http.server_address[1]
        self._http = http
        self._thread = threading.Thread(
            target=http.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"kube-test-server-{self._port}",
            daemon=True,
        )
        self._thread.start()

    def _close(self) -> None:
        if self._http is None:
            return
        self._http.shutdown()
        self._http.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http = None
        self._thread = None

    def stop(self) -> None:
        self._close()

    def refuse_connections(self) -> None:
        """Stops listening: connecting now fails at once with 'connection refused'."""
        self._close()

    def restore(self) -> None:
        """Listens again on the same port (and is no longer `down`)."""
        self.down = False
        if self._http is None:
            self.start()

    # What a test sets up and reads.

    pod_security_restricted = staticmethod(pod_security_restricted)

    def fail_next(
        self,
        count: int = 1,
        status: int = 500,
        *,
        method: str | None = None,
        path_contains: str | None = None,
    ) -> None:
        """The next `count` requests matching `method` and `path_contains` answer `status`."""
        with self._lock:
            self._failures += [_Failure(status, method, path_contains) for _ in range(count)]

    def pod_set(
        self,
        namespace: str,
        name: str = "preview",
        *,
        phase: str,
        ready: bool = False,
        reason: str = "",
        message: str = "",
    ) -> None:
        with self._lock:
            pod = self._objects[("pods", namespace, name)]
            pod["status"] = _pod_status(pod, phase=phase, ready=ready)
            if reason:
                pod["status"]["reason"] = reason
            if message:
                pod["status"]["message"] = message
            pod["metadata"]["annotations"] = {
                **(pod["metadata"].get("annotations") or {}),
                "test/fixed-status": "true",
            }

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (kind, ns, _), obj in sorted(self._objects.items())
                if kind == plural and (namespace is None or ns == namespace)
            ]

    def get(self, plural: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        with self._lock:
            found = self._objects.get((plural, namespace, name))
            return copy.deepcopy(found) if found is not None else None

    @property
    def requests(self) -> list[KubeRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def violations(self) -> list[str]:
        with self._lock:
            return list(self._violations)

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    # Answering (called from the connection threads).

    def _answer(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> KubeReply:
        split = urlsplit(target)
        query = parse_qs(split.query)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        with self._lock:
            reply = self._decide(method, split.path, query, headers, body, raw)
            self._requests.append(
                KubeRequest(method, split.path, query, headers, body, reply.status)
            )
            return reply

    def _decide(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        body: Any,
        raw: bytes,
    ) -> KubeReply:
        if self.down:
            return _error(500, "InternalError", "etcdserver: request timed out")
        for failure in self._failures:
            if (failure.method in (None, method)) and (
                failure.path_contains is None or failure.path_contains in path
            ):
                self._failures.remove(failure)
                return _error(failure.status, "InternalError", f"scripted failure {failure.status}")
        if self.token and headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "Unauthorized", "Unauthorized")
        if raw and body is None:
            return _error(400, "BadRequest", "the body is not JSON")
        route = self._route(path)
        if route is None:
            return _error(404, "NotFound", "the server could not find the requested resource")
        resource, namespace, name, status_path = route
        if method == "POST" and name is None:
            return self._create(resource, namespace, body, headers)
        if method == "GET" and name is None:
            return self._list(resource, namespace, query)
        if method == "GET" and name is not None:
            return self._read(resource, namespace, name)
        if method == "DELETE" and name is not None and not status_path:
            return self._delete(resource, namespace, name)
        return _error(405, "MethodNotAllowed", f"{method} is not supported on {path}")

    @staticmethod
    def _route(path: str) -> tuple[Resource, str, str | None, bool] | None:
        match = _NAMESPACED_PATH.fullmatch(path)
        if match:
            resource = RESOURCES.get(match["plural"])
            if resource is None or not resource.namespaced or resource.base != match["base"]:
                return None
            if match["status"] and resource.plural != "pods":
                return None
            return resource, match["ns"], match["name"], bool(match["status"])
        match = _NAMESPACE_PATH.fullmatch(path)
        if match:
            return RESOURCES["namespaces"], "", match["name"], False
        return None

    def _violation(self, resource: Resource, name: str, problems: list[str], *, code: int) -> None:
        self._violations += [f"{resource.kind} {name!r} ({code}): {p}" for p in problems]

    def _create(
        self, resource: Resource, namespace: str, body: Any, headers: dict[str, str]
    ) -> KubeReply:
        # Without a Content-Type the API server reads its default, JSON; any other is refused.
        content_type = headers.get("content-type", "application/json")
        if not content_type.startswith("application/json"):
            return _error(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml, application/vnd.kubernetes.protobuf",
            )
        if not isinstance(body, dict):
            return _error(400, "BadRequest", "the body must be a JSON object")
        if body.get("kind") != resource.kind or body.get("apiVersion") != resource.api_version:
            return _error(
                400,
                "BadRequest",
                f"the body is a {body.get('apiVersion')}/{body.get('kind')}, not a "
                f"{resource.api_version}/{resource.kind}",
            )
        name = (body.get("metadata") or {}).get("name", "")
        problems = schema_problems(body) or rule_problems(
            body,
            name_rule=resource.name_rule,
            namespaced=resource.namespaced,
            namespace=namespace,
        )
        if problems:
            self._violation(resource, name, problems, code=422)
            return _error(
                422,
                "Invalid",
                f'{resource.kind} "{name}" is invalid: ' + "; ".join(problems),
                name=name,
                kind=resource.kind,
                causes=[{"reason": "FieldValueInvalid", "message": p} for p in problems],
            )
        if resource.namespaced:
            holder = self._objects.get(("namespaces", "", namespace))
            if holder is None:
                return _not_found("namespaces", namespace)
            if holder["status"]["phase"] == "Terminating":
                return _error(
                    403,
                    "Forbidden",
                    f'{resource.plural} "{name}" is forbidden: unable to create new content in '
                    f"namespace {namespace} because it is being terminated",
                )
        key = (resource.plural, namespace, name)
        if key in self._objects:
            return _error(
                409,
                "AlreadyExists",
                f'{resource.plural} "{name}" already exists',
                name=name,
                kind=resource.plural,
            )
        if resource.kind == "Pod":
            refused = self._admit_pod(namespace, name, body)
            if refused is not None:
                return refused
        stored = copy.deepcopy(body)
        metadata = stored["metadata"]
        self._version += 1
        metadata.update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(self._version),
            creationTimestamp=_now(),
        )
        if resource.namespaced:
            metadata["namespace"] = namespace
        if resource.kind == "Namespace":
            # The API server labels every namespace with its name (NetworkPolicy selectors rely
            # on it), and the namespace controller's finalizer holds a deletion until it is empty.
            metadata.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            stored["spec"] = {"finalizers": ["kubernetes"]}
            stored["status"] = {"phase": "Active"}
        if resource.kind == "Pod":
            stored["status"] = _pod_status(stored, phase="Pending", ready=False)
            self._pod_reads[(namespace, name)] = 0
        self._objects[key] = stored
        return KubeReply(201, copy.deepcopy(stored))

    def _admit_pod(self, namespace: str, name: str, pod: dict[str, Any]) -> KubeReply | None:
        labels = self._objects[("namespaces", "", namespace)]["metadata"].get("labels") or {}
        if labels.get("pod-security.kubernetes.io/enforce") == "restricted":
            problems = pod_security_restricted(pod)
            if problems:
                self._violation(RESOURCES["pods"], name, problems, code=403)
                return _error(
                    403,
                    "Forbidden",
                    f'pods "{name}" is forbidden: violates PodSecurity "restricted:latest": '
                    + ", ".join(problems),
                )
        for (plural, ns, quota_name), quota in self._objects.items():
            if plural != "resourcequotas" or ns != namespace:
                continue
            problems = self._quota_exceeded(namespace, quota, pod)
            if problems:
                self._violation(RESOURCES["pods"], name, problems, code=403)
                return _error(
                    403,
                    "Forbidden",
                    f'pods "{name}" is forbidden: exceeded quota: {quota_name}, '
                    + ", ".join(problems),
                )
        return None

    def _quota_exceeded(
        self, namespace: str, quota: dict[str, Any], pod: dict[str, Any]
    ) -> list[str]:
        """What `pod` would pass of `quota` (the LimitRange's defaults are not applied here: a
        container without a limit the quota tracks is refused, as the API does without one)."""
        hard = quota["spec"]["hard"]
        pods = [obj for (p, ns, _), obj in self._objects.items() if p == "pods" and ns == namespace]
        problems = []
        if "pods" in hard and len(pods) + 1 > int(hard["pods"]):
            problems.append(
                f"requested: pods=1, used: pods={len(pods)}, limited: pods={hard['pods']}"
            )
        for tracked in ("limits.cpu", "limits.memory", "requests.cpu", "requests.memory"):
            if tracked not in hard:
                continue
            kind, resource_name = tracked.split(".")
            total = parse_quantity(0)
            for each in [*pods, pod]:
                spec = each["spec"]
                for container in spec["containers"]:
                    amount = (container.get("resources") or {}).get(kind, {}).get(resource_name)
                    if amount is None:
                        return [f"must specify {tracked} for container {container['name']!r}"]
                    total += parse_quantity(amount)
            if total > parse_quantity(hard[tracked]):
                problems.append(f"requested {tracked} would be {total}, limited: {hard[tracked]}")
        return problems

    def _list(self, resource: Resource, namespace: str, query: dict[str, list[str]]) -> KubeReply:
        selector = (query.get("labelSelector") or [""])[0]
        items = [
            copy.deepcopy(obj)
            for (plural, ns, _), obj in sorted(self._objects.items())
            if plural == resource.plural
            and (not resource.namespaced or ns == namespace)
            and _selector_matches(selector, obj["metadata"].get("labels") or {})
        ]
        for item in items:  # a list's items carry no kind of their own
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return KubeReply(
            200,
            {
                "kind": f"{resource.kind}List",
                "apiVersion": resource.api_version,
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            },
        )

    def _read(self, resource: Resource, namespace: str, name: str) -> KubeReply:
        found = self._objects.get((resource.plural, namespace, name))
        if found is None:
            return _not_found(resource.plural, name)
        if resource.kind == "Pod":
            self._pod_progress(namespace, name, found)
        return KubeReply(200, copy.deepcopy(found))

    def _pod_progress(self, namespace: str, name: str, pod: dict[str, Any]) -> None:
        if (pod["metadata"].get("annotations") or {}).get("test/fixed-status"):
            return
        reads = self._pod_reads[(namespace, name)] = self._pod_reads.get((namespace, name), 0) + 1
        mode = self.pod_mode
        if mode == "ready" and reads >= 2:
            pod["status"] = _pod_status(pod, phase="Running", ready=True)
        elif mode == "pending":
            pod["status"] = _pod_status(
                pod, phase="Pending", ready=False, waiting=self.waiting_reason
            )
        elif mode == "fail":
            pod["status"] = _pod_status(pod, phase="Failed", ready=False, init_exit=1)
        elif mode == "crash":
            pod["status"] = _pod_status(pod, phase="Failed", ready=False, main_exit=2)

    def _delete(self, resource: Resource, namespace: str, name: str) -> KubeReply:
        key = (resource.plural, namespace, name)
        found = self._objects.get(key)
        if found is None:
            return _not_found(resource.plural, name)
        if resource.kind != "Namespace":
            del self._objects[key]
            return KubeReply(
                200,
                status_object(200, "", "", {"name": name, "kind": resource.plural, "uid": ""}),
            )
        if found["status"]["phase"] == "Terminating":
            return _error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on namespaces "{name}": The system is ensuring '
                "all content is removed from this namespace.  Upon completion, this namespace "
                "will automatically be purged by the system.",
            )
        found["metadata"]["deletionTimestamp"] = _now()
        found["status"]["phase"] = "Terminating"
        for held in [k for k in self._objects if k[0] != "namespaces" and k[1] == name]:
            del self._objects[held]
        answer = copy.deepcopy(found)
        if not self.keep_terminating:
            del self._objects[key]
        return KubeReply(200, answer)

    def _failed(self, error: str) -> None:
        with self._lock:
            self._errors.append(error)


def _container_status(
    container: dict[str, Any], *, state: dict[str, Any], ready: bool
) -> dict[str, Any]:
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": "running" in state,
        "state": state,
    }


def _pod_status(
    pod: dict[str, Any],
    *,
    phase: str,
    ready: bool,
    waiting: str = "",
    init_exit: int | None = None,
    main_exit: int | None = None,
) -> dict[str, Any]:
    """A PodStatus as the kubelet reports it for `phase`."""
    now = _now()
    spec = pod["spec"]
    running = {"running": {"startedAt": now}}
    completed = {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": now}}
    inits, mains = spec.get("initContainers") or [], spec["containers"]
    if init_exit is not None:
        failed = {
            "terminated": {
                "exitCode": init_exit,
                "reason": "Error",
                "message": "index.html does not match its recorded SHA-256\n",
                "finishedAt": now,
            }
        }
        init_states = [failed] * len(inits)
        main_states = [{"waiting": {"reason": "PodInitializing"}}] * len(mains)
    elif waiting:
        init_states = [{"waiting": {"reason": waiting, "message": f"{waiting} (test)"}}] * len(
            inits
        )
        main_states = [{"waiting": {"reason": "PodInitializing"}}] * len(mains)
    elif phase == "Pending":
        init_states = [running] * len(inits)
        main_states = [{"waiting": {"reason": "PodInitializing"}}] * len(mains)
    elif main_exit is not None:
        init_states = [completed] * len(inits)
        main_states = [
            {
                "terminated": {
                    "exitCode": main_exit,
                    "reason": "Error",
                    "message": "Traceback: the preview command failed\n",
                    "finishedAt": now,
                }
            }
        ] * len(mains)
    elif phase == "Running":
        init_states, main_states = [completed] * len(inits), [running] * len(mains)
    else:
        init_states, main_states = [completed] * len(inits), [completed] * len(mains)
    flag = "True" if ready else "False"
    return {
        "phase": phase,
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True" if phase == "Running" else "False"},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
        ],
        "initContainerStatuses": [
            _container_status(c, state=s, ready=False)
            for c, s in zip(inits, init_states, strict=True)
        ],
        "containerStatuses": [
            _container_status(c, state=s, ready=ready)
            for c, s in zip(mains, main_states, strict=True)
        ],
    }


class _Handler(BaseHTTPRequestHandler):
    server: _KubeHttpServer

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the server records what tests need

    def _handle(self) -> None:
        try:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = self.server.kube._answer(self.command, self.path, headers, raw)
        except Exception:
            self.server.kube._failed(traceback.format_exc())
            reply = _error(500, "InternalError", "the stand-in failed")
        body = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # a client that timed out has gone


class _KubeHttpServer(ThreadingHTTPServer):
    allow_reuse_address = True  # restore() binds the same port again at once
    daemon_threads = True

    def __init__(self, address: tuple[str, int], kube: KubeApiServer) -> None:
        self.kube = kube
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up early is not the test's concern


@pytest.fixture
def kube_api(settings: Any, tmp_path: Path) -> Iterator[KubeApiServer]:
    """A fresh Kubernetes API stand-in for this test, with the provisioner's settings pointing
    at it. Fails the test on a violation it did not expect, or on the stand-in's own error."""
    server = KubeApiServer()
    server.start()
    token_file = tmp_path / "kube-token"
    token_file.write_text(server.token + "\n")
    settings.PREVIEW_KUBE_API_URL = server.url
    settings.PREVIEW_KUBE_TOKEN_FILE = str(token_file)
    settings.PREVIEW_KUBE_CA_FILE = ""
    settings.PREVIEW_KUBE_IMAGE = "registry.example.com/marketplace/preview-runtime:1"
    settings.PREVIEW_KUBE_NAMESPACE_PREFIX = "preview-"
    settings.PREVIEW_KUBE_PLATFORM_NAMESPACE = "marketplace"
    settings.PREVIEW_KUBE_STORAGE_CIDRS = ["52.216.0.0/15", "3.5.0.0/19"]
    settings.PREVIEW_KUBE_TIMEOUT_SECONDS = 2.0
    settings.PREVIEW_KUBE_NODE_POOL = ""
    settings.PREVIEW_KUBE_RUNTIME_CLASS = ""
    settings.PREVIEW_SUBNET_IDS = []
    settings.PREVIEW_SECURITY_GROUP = ""
    try:
        yield server
    finally:
        errors, violations = server.errors, server.violations
        server.stop()
    if errors:
        pytest.fail("the Kubernetes API stand-in failed:\n" + "\n".join(errors), pytrace=False)
    if violations and not server.violations_expected:
        pytest.fail("the Kubernetes API refused objects:\n" + "\n".join(violations), pytrace=False)
