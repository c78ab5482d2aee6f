"""What the Kubernetes API server refuses, for the stand-in (tests/support/kube_api): the
OpenAPI schema, the server's own rules the schema cannot say, and the `restricted` level of Pod
Security. Each answers the problems found, [] for none.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import kubernetes_validate
from kubernetes.utils.quantity import parse_quantity

# An old release still run by managed clusters and the newest the schemas know: an object valid
# for both uses neither a removed field nor one too new for the older clusters.
SCHEMA_VERSIONS = ("1.30", kubernetes_validate.latest_version())
CONFIG_MAP_MAX_BYTES = 1024 * 1024

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def schema_problems(body: dict[str, Any]) -> list[str]:
    """`body` against the strict schema (no unknown field) of each of SCHEMA_VERSIONS."""
    problems = []
    for version in SCHEMA_VERSIONS:
        try:
            kubernetes_validate.validate(body, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            problems.append(f"schema {version}: {where}: {exc.message}")
    return problems


def rule_problems(
    body: dict[str, Any], *, name_rule: str, namespaced: bool, namespace: str | None
) -> list[str]:
    """The API server's validation of `body` beyond the schema: names (`name_rule` "label" or
    "subdomain"), labels, annotations, and each kind's own rules."""
    problems = _metadata_problems(
        body, name_rule=name_rule, namespaced=namespaced, namespace=namespace
    )
    return problems + _KIND_RULES.get(body.get("kind", ""), lambda _: [])(body)


def _quantity_problem(value: Any) -> str:
    try:
        parse_quantity(value)
    except (ValueError, TypeError):
        return f"{value!r} is not a quantity"
    return ""


def _label_problems(where: str, labels: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in labels.items():
        problems += [f"{where}: {p}" for p in _key_problems(key)]
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
            problems.append(f"{where}[{key}]: {value!r} is not a valid label value")
    return problems


def _key_problems(key: str) -> list[str]:
    prefix, _, name = key.rpartition("/")
    problems = []
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        problems.append(f"{key!r}: the prefix must be a DNS subdomain")
    if len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        problems.append(f"{key!r}: the name must be a qualified name of at most 63 characters")
    return problems


def _metadata_problems(
    body: dict[str, Any], *, name_rule: str, namespaced: bool, namespace: str | None
) -> list[str]:
    metadata = body.get("metadata") or {}
    name = metadata.get("name", "")
    problems = []
    pattern, limit = (_DNS_LABEL, 63) if name_rule == "label" else (_DNS_SUBDOMAIN, 253)
    if not name or len(name) > limit or not pattern.fullmatch(name):
        problems.append(f"metadata.name: {name!r} is not a DNS-1123 {name_rule}")
    if namespaced and metadata.get("namespace") not in (None, namespace):
        problems.append("metadata.namespace: does not match the namespace of the request")
    problems += _label_problems("metadata.labels", metadata.get("labels") or {})
    for key in metadata.get("annotations") or {}:
        problems += [f"metadata.annotations: {p}" for p in _key_problems(key)]
    return problems


def _resources_problems(where: str, resources: dict[str, Any]) -> list[str]:
    problems = []
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for kind, amounts in (("requests", requests), ("limits", limits)):
        for resource_name, value in amounts.items():
            if problem := _quantity_problem(value):
                problems.append(f"{where}.resources.{kind}[{resource_name}]: {problem}")
    for resource_name, value in requests.items():
        limit = limits.get(resource_name)
        if limit is None or _quantity_problem(value) or _quantity_problem(limit):
            continue
        if parse_quantity(value) > parse_quantity(limit):
            problems.append(
                f"{where}.resources.requests[{resource_name}]: must be less than or equal to "
                "the limit"
            )
    return problems


def _pod_problems(pod: dict[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    problems = []
    volumes = {}
    for index, volume in enumerate(spec.get("volumes") or []):
        if volume["name"] in volumes:
            problems.append(f"spec.volumes[{index}].name: Duplicate value {volume['name']!r}")
        volumes[volume["name"]] = volume
        limit = (volume.get("emptyDir") or {}).get("sizeLimit")
        if limit is not None and (problem := _quantity_problem(limit)):
            problems.append(f"spec.volumes[{index}].emptyDir.sizeLimit: {problem}")
    names: set[str] = set()
    for group in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(group) or []):
            where = f"spec.{group}[{index}]"
            if not _DNS_LABEL.fullmatch(container["name"]) or container["name"] in names:
                problems.append(f"{where}.name: {container['name']!r} is invalid or duplicate")
            names.add(container["name"])
            if not container.get("image"):
                problems.append(f"{where}.image: Required value")
            problems += _resources_problems(where, container.get("resources") or {})
            paths: set[str] = set()
            for mount_index, mount in enumerate(container.get("volumeMounts") or []):
                if mount["name"] not in volumes:
                    problems.append(
                        f"{where}.volumeMounts[{mount_index}].name: Not found: {mount['name']!r}"
                    )
                if mount["mountPath"] in paths:
                    problems.append(f"{where}.volumeMounts[{mount_index}].mountPath: duplicate")
                paths.add(mount["mountPath"])
    if spec.get("restartPolicy", "Always") not in ("Always", "OnFailure", "Never"):
        problems.append("spec.restartPolicy: Unsupported value")
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and deadline < 1:
        problems.append("spec.activeDeadlineSeconds: must be greater than or equal to 1")
    return problems


def _ports_problems(where: str, ports: list[dict[str, Any]]) -> list[str]:
    problems = []
    for index, port in enumerate(ports):
        if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
            problems.append(f"{where}[{index}].protocol: Unsupported value")
        number = port.get("port")
        if isinstance(number, int) and not 1 <= number <= 65535:
            problems.append(f"{where}[{index}].port: must be between 1 and 65535")
    return problems


def _network_policy_problems(policy: dict[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    problems = []
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for index, rule in enumerate(spec.get(direction) or []):
            where = f"spec.{direction}[{index}]"
            problems += _ports_problems(f"{where}.ports", rule.get("ports") or [])
            for peer_index, peer in enumerate(rule.get(peers_key) or []):
                block = peer.get("ipBlock")
                if block is None:
                    continue
                try:
                    ipaddress.ip_network(block["cidr"], strict=False)
                except ValueError:
                    problems.append(
                        f"{where}.{peers_key}[{peer_index}].ipBlock.cidr: {block['cidr']!r} "
                        "is not a CIDR"
                    )
    for kind in spec.get("policyTypes") or []:
        if kind not in ("Ingress", "Egress"):
            problems.append(f"spec.policyTypes: Unsupported value {kind!r}")
    return problems


def _config_map_problems(config_map: dict[str, Any]) -> list[str]:
    data = config_map.get("data") or {}
    problems = [f"data[{key!r}]: not a valid key" for key in data if not _CONFIG_KEY.fullmatch(key)]
    size = sum(len(key) + len(value.encode()) for key, value in data.items())
    if size > CONFIG_MAP_MAX_BYTES:
        problems.append(f"[]: Too long: must have at most {CONFIG_MAP_MAX_BYTES} bytes")
    return problems


def _quota_problems(quota: dict[str, Any]) -> list[str]:
    hard = (quota.get("spec") or {}).get("hard") or {}
    return [f"spec.hard[{k}]: {p}" for k, v in hard.items() if (p := _quantity_problem(v))]


def _limit_range_problems(limit_range: dict[str, Any]) -> list[str]:
    problems = []
    for index, item in enumerate((limit_range.get("spec") or {}).get("limits") or []):
        for field in ("default", "defaultRequest", "max", "min"):
            for name, value in (item.get(field) or {}).items():
                if problem := _quantity_problem(value):
                    problems.append(f"spec.limits[{index}].{field}[{name}]: {problem}")
        maximum = item.get("max") or {}
        for field in ("default", "defaultRequest"):
            for name, value in (item.get(field) or {}).items():
                if name in maximum and parse_quantity(value) > parse_quantity(maximum[name]):
                    problems.append(f"spec.limits[{index}].{field}[{name}]: above the max")
    return problems


def _service_problems(service: dict[str, Any]) -> list[str]:
    spec = service.get("spec") or {}
    return [
        *_label_problems("spec.selector", spec.get("selector") or {}),
        *_ports_problems("spec.ports", spec.get("ports") or []),
    ]


_KIND_RULES = {
    "Pod": _pod_problems,
    "NetworkPolicy": _network_policy_problems,
    "ConfigMap": _config_map_problems,
    "ResourceQuota": _quota_problems,
    "LimitRange": _limit_range_problems,
    "Service": _service_problems,
}

# Pod Security Standards, `restricted` (the checks of the pod-security admission plugin).
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def pod_security_restricted(pod: dict[str, Any]) -> list[str]:
    """What the `restricted` level of Pod Security refuses in `pod` ([] when it passes)."""
    spec = pod.get("spec") or {}
    pod_context = spec.get("securityContext") or {}
    problems = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.append(f"host namespaces ({flag}=true)")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            problems.append(f"restricted volume types (volume {volume['name']!r} uses {kinds})")
    if (pod_context.get("runAsUser") == 0) or pod_context.get("runAsGroup") == 0:
        problems.append("runAsUser=0 or runAsGroup=0 (pod)")
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for container in containers:
        name = container["name"]
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"privileged (container {name!r} must not set privileged=true)")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(
                f"allowPrivilegeEscalation != false (container {name!r} must set "
                "securityContext.allowPrivilegeEscalation=false)"
            )
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(
                f"unrestricted capabilities (container {name!r} must set "
                'securityContext.capabilities.drop=["ALL"])'
            )
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"unrestricted capabilities (container {name!r} adds some)")
        run_as_non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if run_as_non_root is not True:
            problems.append(
                f"runAsNonRoot != true (pod or container {name!r} must set "
                "securityContext.runAsNonRoot=true)"
            )
        if context.get("runAsUser") == 0:
            problems.append(f"runAsUser=0 (container {name!r})")
        seccomp = (context.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(
                f"seccompProfile (pod or container {name!r} must set "
                'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
            )
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"hostPort (container {name!r} uses hostPort)")
    return problems
