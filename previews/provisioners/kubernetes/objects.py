"""What one session's sandbox is made of: the settings it is made from, the names, and the
Kubernetes objects (as the API's own JSON) of a SandboxPlan, built and checked before any call.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import math
import re
import socket
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.files.storage import default_storage
from kubernetes.utils.quantity import parse_quantity

from previews.provisioners.base import ProvisionFailed, StartRequest

MANAGED_BY = "marketplace-previews"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_SESSION = "marketplace.preview/session"
LABEL_SKU = "marketplace.preview/sku"
LABEL_EXPIRES = "marketplace.preview/expires"
LABEL_POD_SECURITY = "pod-security.kubernetes.io/enforce"
ANNOTATION_SUBNETS = "marketplace.preview/subnet-ids"
ANNOTATION_SECURITY_GROUP = "marketplace.preview/security-group"
# The node label and taint of the preview pool (MARKETPLACE_PREVIEW_KUBE_NODE_POOL).
POOL_KEY = "marketplace.preview/pool"
APP_NAME = "marketplace-preview"

POD_NAME = "preview"
SERVICE_NAME = "preview"
CONFIG_MAP_NAME = "preview-material"
PORT = 8080
# nobody: no file on the image belongs to it, and the restricted Pod Security level wants a
# non-root uid.
SANDBOX_UID = 65534
MATERIAL_DIR = "/preview"
FETCH_DIR = "/fetch"
TMP_DIR = "/tmp"  # noqa: S108 - the sandbox's own emptyDir, not the host's /tmp
# The API refuses a ConfigMap whose data passes 1 MiB; a little room for its metadata.
CONFIG_MAP_MAX_BYTES = 1024 * 1024 - 4096

_ENVIRONMENT_ID = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_VALUE_INVALID = re.compile(r"[^A-Za-z0-9._-]+")


@functools.cache
def fetch_script() -> str:
    """The init container's program (fetch.py beside this file), shipped in the ConfigMap."""
    return Path(__file__).with_name("fetch.py").read_text(encoding="utf-8")


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KubeConfig:
    """The MARKETPLACE_PREVIEW_KUBE_* settings, read and checked once per provisioner."""

    api_url: str
    token_file: str
    ca_file: str
    namespace_prefix: str
    image: str
    cpu: str
    memory: str
    storage_cidrs: tuple[str, ...]
    platform_namespace: str
    timeout: float
    subnet_ids: tuple[str, ...]
    security_group: str
    node_pool: str
    runtime_class: str
    tmp_bytes: int

    @classmethod
    def from_settings(cls) -> KubeConfig:
        return cls(
            api_url=settings.PREVIEW_KUBE_API_URL,
            token_file=settings.PREVIEW_KUBE_TOKEN_FILE,
            ca_file=settings.PREVIEW_KUBE_CA_FILE,
            namespace_prefix=settings.PREVIEW_KUBE_NAMESPACE_PREFIX,
            image=settings.PREVIEW_KUBE_IMAGE,
            cpu=settings.PREVIEW_KUBE_CPU,
            memory=settings.PREVIEW_KUBE_MEMORY,
            storage_cidrs=tuple(settings.PREVIEW_KUBE_STORAGE_CIDRS),
            platform_namespace=settings.PREVIEW_KUBE_PLATFORM_NAMESPACE,
            timeout=float(settings.PREVIEW_KUBE_TIMEOUT_SECONDS),
            subnet_ids=tuple(settings.PREVIEW_SUBNET_IDS),
            security_group=settings.PREVIEW_SECURITY_GROUP,
            node_pool=settings.PREVIEW_KUBE_NODE_POOL,
            runtime_class=settings.PREVIEW_KUBE_RUNTIME_CLASS,
            tmp_bytes=int(settings.PREVIEW_SANDBOX_TMPFS_BYTES),
        )

    def problem(self) -> str:
        """What makes these settings unusable for a start, or ''."""
        if not self.image:
            return "MARKETPLACE_PREVIEW_KUBE_IMAGE is not set: name the image sandboxes run"
        for name, value in (("CPU", self.cpu), ("MEMORY", self.memory)):
            try:
                if parse_quantity(value) <= 0:
                    raise ValueError(value)
            except ValueError:
                return f"MARKETPLACE_PREVIEW_KUBE_{name}={value!r} is not a Kubernetes quantity"
        for cidr in self.storage_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                return f"MARKETPLACE_PREVIEW_KUBE_STORAGE_CIDRS has {cidr!r}, not a CIDR"
        if not _DNS_LABEL.fullmatch(self.platform_namespace):
            return (
                f"MARKETPLACE_PREVIEW_KUBE_PLATFORM_NAMESPACE={self.platform_namespace!r} "
                "is not a namespace name"
            )
        return ""


def namespace_name(prefix: str, environment_id: str) -> str | None:
    """``{prefix}{environment_id}``, or None when that is no valid namespace name (the id is
    lowercase hex and dashes, at most 32 characters; the name a DNS-1123 label of at most 63)."""
    if not _ENVIRONMENT_ID.fullmatch(environment_id):
        return None
    name = f"{prefix}{environment_id}"
    return name if _DNS_LABEL.fullmatch(name) else None


def label_value(value: str) -> str:
    """`value` made a valid label value: other characters become '-', at most 63, beginning and
    ending alphanumeric ('' if nothing is left)."""
    cleaned = _LABEL_VALUE_INVALID.sub("-", value)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


def _twice(quantity: str, *, cpu: bool) -> str:
    """Room for two pods of `quantity` in the namespace's quota (pods: 2)."""
    value = parse_quantity(quantity) * 2
    if cpu:
        return f"{(value * 1000).to_integral_value()}m"
    return str(value.to_integral_value())


def _cidr(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


# --- the objects -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxPlan:
    """Everything the objects of one session are made from: built first, so that nothing is
    created for a request that cannot start."""

    namespace: str
    session_label: str
    sku_label: str
    expires: int
    deadline_seconds: int
    command: tuple[str, ...]
    fetch_list: tuple[dict[str, Any], ...]
    material_bytes: int
    material_files: int
    config: KubeConfig
    # The TCP ports of the presigned URLs (443 for S3), () when there is nothing to fetch.
    storage_ports: tuple[int, ...] = ()
    # (address, host name) for each storage host the init container resolves by /etc/hosts.
    host_aliases: tuple[tuple[str, str], ...] = ()

    @property
    def labels(self) -> dict[str, str]:
        labels = {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_SESSION: self.session_label,
            LABEL_EXPIRES: str(self.expires),
        }
        if self.sku_label:
            labels[LABEL_SKU] = self.sku_label
        return labels

    @property
    def annotations(self) -> dict[str, str]:
        annotations = {}
        if self.config.subnet_ids:
            annotations[ANNOTATION_SUBNETS] = ",".join(self.config.subnet_ids)
        if self.config.security_group:
            annotations[ANNOTATION_SECURITY_GROUP] = self.config.security_group
        return annotations

    @property
    def pod_labels(self) -> dict[str, str]:
        return {**self.labels, LABEL_NAME: APP_NAME}

    def _metadata(self, name: str) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "labels": self.labels}

    def namespace_manifest(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": self.namespace,
            # `restricted`: the API itself refuses a Pod here that would run as root, keep
            # capabilities or escalate, whatever this module sends.
            "labels": {**self.labels, LABEL_POD_SECURITY: "restricted"},
        }
        if self.annotations:
            metadata["annotations"] = self.annotations
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}

    def network_policy_manifest(self) -> dict[str, Any]:
        # Nothing out but object storage on the presigned URLs' port, and only when there is
        # material to fetch: the platform calls the sandbox, never the other way round, and
        # there is no DNS (the init container finds storage by hostAliases). The policy holds
        # for the whole Pod: the main container can reach storage on that port too (the URLs
        # expire with the start; the docs say what else bounds it).
        egress: list[dict[str, Any]] = []
        if self.storage_ports:
            # sandbox_plan made sure the storage hosts are inside the CIDRs, so `to` is never
            # empty (a rule without peers would allow every destination).
            egress.append(
                {
                    "to": [
                        {"ipBlock": {"cidr": _cidr(c)}}
                        for c in dict.fromkeys(self.config.storage_cidrs)
                    ],
                    "ports": [{"protocol": "TCP", "port": port} for port in self.storage_ports],
                }
            )
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self._metadata("preview-default-deny"),
            "spec": {
                "podSelector": {},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {
                                        "kubernetes.io/metadata.name": (
                                            self.config.platform_namespace
                                        )
                                    }
                                }
                            }
                        ],
                        "ports": [{"protocol": "TCP", "port": PORT}],
                    }
                ],
                "egress": egress,
            },
        }

    def resource_quota_manifest(self) -> dict[str, Any]:
        cpu, memory = _twice(self.config.cpu, cpu=True), _twice(self.config.memory, cpu=False)
        return {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": self._metadata("preview-quota"),
            "spec": {
                "hard": {
                    "pods": "2",
                    "requests.cpu": cpu,
                    "limits.cpu": cpu,
                    "requests.memory": memory,
                    "limits.memory": memory,
                    "persistentvolumeclaims": "0",
                    "services.loadbalancers": "0",
                    "services.nodeports": "0",
                }
            },
        }

    def limit_range_manifest(self) -> dict[str, Any]:
        limits = {"cpu": self.config.cpu, "memory": self.config.memory}
        return {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": self._metadata("preview-limits"),
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "default": limits,
                        "defaultRequest": limits,
                        "max": limits,
                    }
                ]
            },
        }

    def config_map_data(self) -> dict[str, str]:
        return {
            "fetch.py": fetch_script(),
            "files.json": json.dumps(list(self.fetch_list), separators=(",", ":")),
        }

    def config_map_manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self._metadata(CONFIG_MAP_NAME),
            # Read by the init container only; nobody changes it while the Pod runs.
            "immutable": True,
            "data": self.config_map_data(),
        }

    def service_manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self._metadata(SERVICE_NAME),
            "spec": {
                "type": "ClusterIP",
                "selector": {LABEL_NAME: APP_NAME, LABEL_SESSION: self.session_label},
                "ports": [{"name": "http", "protocol": "TCP", "port": PORT, "targetPort": PORT}],
            },
        }

    def _container_security(self) -> dict[str, Any]:
        return {
            "runAsNonRoot": True,
            "runAsUser": SANDBOX_UID,
            "runAsGroup": SANDBOX_UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    def _resources(self) -> dict[str, Any]:
        # Requests equal to limits: the Guaranteed class, never evicted for its neighbours.
        amounts = {"cpu": self.config.cpu, "memory": self.config.memory}
        return {"requests": dict(amounts), "limits": dict(amounts)}

    def pod_manifest(self) -> dict[str, Any]:
        config = self.config
        # The downloaded files, block-rounded, with room for the folders.
        material_limit = self.material_bytes + 4096 * (self.material_files + 1) + 1024 * 1024
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": self.deadline_seconds,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 5,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": SANDBOX_UID,
                "runAsGroup": SANDBOX_UID,
                "fsGroup": SANDBOX_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "initContainers": [
                {
                    "name": "fetch",
                    "image": config.image,
                    "command": [
                        "python3",
                        "-I",
                        "-B",
                        f"{FETCH_DIR}/fetch.py",
                        f"{FETCH_DIR}/files.json",
                        MATERIAL_DIR,
                    ],
                    "securityContext": self._container_security(),
                    "resources": self._resources(),
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [
                        {"name": "material", "mountPath": MATERIAL_DIR},
                        {"name": "fetch", "mountPath": FETCH_DIR, "readOnly": True},
                    ],
                }
            ],
            "containers": [
                {
                    "name": "preview",
                    "image": config.image,
                    "command": list(self.command),
                    "workingDir": MATERIAL_DIR,
                    "env": [
                        {"name": "PREVIEW_PORT", "value": str(PORT)},
                        {"name": "HOME", "value": TMP_DIR},
                    ],
                    "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
                    # Ready once the command accepts connections on its port; whatever it
                    # answers on `/` is its own business.
                    "readinessProbe": {
                        "tcpSocket": {"port": PORT},
                        "periodSeconds": 1,
                        "failureThreshold": 1,
                    },
                    "securityContext": self._container_security(),
                    "resources": self._resources(),
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "volumeMounts": [
                        {"name": "material", "mountPath": MATERIAL_DIR, "readOnly": True},
                        {"name": "tmp", "mountPath": TMP_DIR},
                    ],
                }
            ],
            "volumes": [
                {"name": "material", "emptyDir": {"sizeLimit": str(material_limit)}},
                # tmpfs, as the local sandbox has: bounded hard, counted in the memory limit.
                {
                    "name": "tmp",
                    "emptyDir": {"medium": "Memory", "sizeLimit": str(config.tmp_bytes)},
                },
                {
                    "name": "fetch",
                    "configMap": {"name": CONFIG_MAP_NAME, "defaultMode": 0o444},
                },
            ],
        }
        if config.node_pool:
            spec["nodeSelector"] = {POOL_KEY: config.node_pool}
            spec["tolerations"] = [
                {
                    "key": POOL_KEY,
                    "operator": "Equal",
                    "value": config.node_pool,
                    "effect": "NoSchedule",
                }
            ]
        if config.runtime_class:
            spec["runtimeClassName"] = config.runtime_class
        if self.host_aliases:
            hostnames: dict[str, list[str]] = {}
            for address, host in self.host_aliases:
                hostnames.setdefault(address, []).append(host)
            spec["hostAliases"] = [
                {"ip": address, "hostnames": names} for address, names in hostnames.items()
            ]
        metadata: dict[str, Any] = {
            "name": POD_NAME,
            "namespace": self.namespace,
            "labels": self.pod_labels,
        }
        if self.annotations:
            metadata["annotations"] = self.annotations
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def presigned_urls(request: StartRequest, *, lifetime: int) -> list[str]:
    """A presigned URL for each file of the material, in order.

    Raises ProvisionFailed when the default storage has none (local files): the Pod has no
    other way to the bytes, and must never hold the platform's storage credentials.
    """
    if not request.files:
        return []
    storage = default_storage
    if not (hasattr(storage, "bucket") and getattr(storage, "querystring_auth", False)):
        raise ProvisionFailed(
            "the kubernetes provisioner fetches preview material by presigned URL, and the "
            "default storage has none (local files): store files in S3 (MARKETPLACE_S3_BUCKET)"
        )
    try:
        return [storage.url(item.storage_key, expire=lifetime) for item in request.files]
    except (BotoCoreError, ClientError) as exc:  # presigning needs credentials, nothing more
        raise ProvisionFailed(f"the material's URLs could not be presigned: {exc}") from exc


def storage_route(
    urls: list[str], cidrs: tuple[str, ...]
) -> tuple[tuple[int, ...], tuple[tuple[str, str], ...]]:
    """The TCP ports the init container needs open to fetch `urls`, and the (address, host
    name) pairs its /etc/hosts needs: the Pod has no DNS, so each host is resolved here, at the
    start, and only its addresses inside `cidrs` (MARKETPLACE_PREVIEW_KUBE_STORAGE_CIDRS) are
    kept. Raises ProvisionFailed for a host that cannot be resolved or has no address inside.
    """
    networks = [ipaddress.ip_network(c, strict=False) for c in cidrs]
    # Every file's URL names the same storage: each host is resolved once.
    hosts = dict.fromkeys(
        (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        for parts in map(urlsplit, urls)
    )
    aliases: dict[tuple[str, str], None] = {}
    for host, port in hosts:
        try:
            addresses = [ipaddress.ip_address(host)]
            literal = True
        except ValueError:
            literal = False
            try:
                found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                raise ProvisionFailed(
                    f"the storage host {host} could not be resolved for the sandbox: {exc}"
                ) from exc
            addresses = list(dict.fromkeys(ipaddress.ip_address(f[4][0]) for f in found))
        inside = [a for a in addresses if any(a in network for network in networks)]
        if not inside:
            raise ProvisionFailed(
                f"the storage host {host} ({', '.join(map(str, addresses))}) is not inside "
                "MARKETPLACE_PREVIEW_KUBE_STORAGE_CIDRS: the sandbox could not fetch its material"
            )
        if not literal:
            aliases.update(((str(a), host), None) for a in inside)
    return tuple(dict.fromkeys(port for _, port in hosts)), tuple(aliases)


def sandbox_plan(
    request: StartRequest, config: KubeConfig, *, now: float, timeout: float
) -> SandboxPlan:
    """The plan of one session's objects; raises ProvisionFailed for a request or settings that
    cannot start (before anything is created)."""
    problem = config.problem()
    if problem:
        raise ProvisionFailed(problem)
    namespace = namespace_name(config.namespace_prefix, request.environment_id)
    if namespace is None:
        raise ProvisionFailed(
            f"{config.namespace_prefix + request.environment_id!r} is not a valid namespace "
            "name: check MARKETPLACE_PREVIEW_KUBE_NAMESPACE_PREFIX (a DNS label, at most 31 "
            "characters)"
        )
    ttl = request.expires_at - now
    if ttl <= 0:
        raise ProvisionFailed("the session expired before its sandbox could start")
    if not request.command:
        raise ProvisionFailed("the material has no command to run")
    for item in request.files:
        relative = PurePosixPath(item.path)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise ProvisionFailed(f"the material names an unsafe path: {item.path!r}")
    # The URLs live no longer than the start: the files are on the Pod's disk once the init
    # container is done, and the main container can reach storage too (network_policy_manifest).
    urls = presigned_urls(request, lifetime=max(1, math.ceil(timeout)))
    storage_ports, host_aliases = storage_route(urls, config.storage_cidrs)
    plan = SandboxPlan(
        namespace=namespace,
        session_label=label_value(request.session_id) or "unknown",
        sku_label=label_value(request.sku_slug),
        expires=math.ceil(request.expires_at),
        deadline_seconds=max(1, math.ceil(ttl)),
        command=tuple(request.command),
        fetch_list=tuple(
            {"path": item.path, "url": url, "sha256": item.sha256, "size": item.size}
            for item, url in zip(request.files, urls, strict=True)
        ),
        material_bytes=sum(item.size for item in request.files),
        material_files=len(request.files),
        config=config,
        storage_ports=storage_ports,
        host_aliases=host_aliases,
    )
    size = sum(len(k) + len(v.encode()) for k, v in plan.config_map_data().items())
    if size > CONFIG_MAP_MAX_BYTES:
        raise ProvisionFailed(
            f"the material's {len(request.files)} files make a file list of {size} bytes, more "
            "than a ConfigMap holds (1 MiB): preview material with fewer files"
        )
    return plan
