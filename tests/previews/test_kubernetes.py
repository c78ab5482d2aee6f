"""The kubernetes provisioner against the Kubernetes API stand-in (tests/support/kube_api.py):
what it creates for a session, how it fails, and how it tears down and lists. No database: the
provisioner is driven directly with StartRequests built here.

The stand-in refuses what the real API server refuses (the OpenAPI schema, the server's own
rules, Pod Security `restricted`, quotas) and fails a test that leaves a refusal it did not
expect, so every test here also proves the objects are valid.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from marketplace.storages import s3_storage as s3_storage_config
from previews.provisioners import provisioner_get
from previews.provisioners.base import MaterialFile, ProvisionFailed, Running, StartRequest
from previews.provisioners.kubernetes import KubernetesApiError, KubernetesProvisioner, fetch
from previews.provisioners.kubernetes.objects import fetch_script, label_value, namespace_name

if TYPE_CHECKING:
    from tests.support.kube_api import KubeApiServer

# The `kube_api` fixture (tests/conftest.py does not list it). Imported as a plugin only, so
# that pytest loads it before anything imports it.
pytest_plugins = ["tests.support.kube_api"]

SESSION = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
ENV_ID = "9f3c2a7e51d04b6c"
NAMESPACE = f"preview-{ENV_ID}"
COMMAND = ["python3", "-m", "http.server", "8080"]
SANDBOX_TMP = "/tmp"  # noqa: S108 - inside the Pod
DOCS = Path(__file__).resolve().parents[2] / "docs" / "previews-kubernetes.md"


def make_request(**overrides: Any) -> StartRequest:
    values: dict[str, Any] = {
        "session_id": SESSION,
        "environment_id": ENV_ID,
        "sku_slug": "pixel-fonts",
        "material_digest": "0" * 64,
        "material_version": 1,
        "command": COMMAND,
        "files": (),
        "expires_at": time.time() + 600,
    }
    values.update(overrides)
    return StartRequest(**values)


def start(request: StartRequest | None = None, *, timeout: float = 30.0) -> Any:
    # Long: a start that succeeds returns once the pod is ready, and a loaded machine is slow.
    return KubernetesProvisioner().start(request or make_request(), timeout=timeout)


def posted(kube_api: KubeApiServer, plural: str) -> list[dict[str, Any]]:
    """The bodies the provisioner sent to create `plural`."""
    return [
        r.body for r in kube_api.requests if r.method == "POST" and r.path.endswith(f"/{plural}")
    ]


# --- what start creates ------------------------------------------------------------------------


def test_start_creates_each_object_in_order_and_answers_the_service(
    kube_api: KubeApiServer,
) -> None:
    environment = start()

    assert environment.environment_id == ENV_ID
    assert environment.endpoint == f"http://preview.{NAMESPACE}.svc:8080"
    assert environment.host == NAMESPACE
    creates = [r.path for r in kube_api.requests if r.method == "POST"]
    assert creates == [
        "/api/v1/namespaces",
        f"/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies",
        f"/api/v1/namespaces/{NAMESPACE}/resourcequotas",
        f"/api/v1/namespaces/{NAMESPACE}/limitranges",
        f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        f"/api/v1/namespaces/{NAMESPACE}/services",
        f"/api/v1/namespaces/{NAMESPACE}/pods",
    ]
    # Every request carried the token.
    assert {r.headers["authorization"] for r in kube_api.requests} == {"Bearer kube-test-token"}
    # It waited for the Pod: read Pending, then Running and Ready.
    reads = [r for r in kube_api.requests if r.path.endswith("/pods/preview")]
    assert [r.status for r in reads] == [200, 200]
    assert kube_api.violations == []


def test_every_object_passes_the_schema_and_the_api_servers_rules(
    kube_api: KubeApiServer, settings: Any
) -> None:
    # Everything optional switched on: the node pool, a runtime class, the annotations.
    settings.PREVIEW_KUBE_NODE_POOL = "previews"
    settings.PREVIEW_KUBE_RUNTIME_CLASS = "gvisor"
    settings.PREVIEW_SUBNET_IDS = ["subnet-0a1b2c", "subnet-3d4e5f"]
    settings.PREVIEW_SECURITY_GROUP = "sg-0123456789abcdef0"

    start()

    assert kube_api.violations == []
    kinds = {r.body["kind"] for r in kube_api.requests if r.method == "POST" and r.status == 201}
    assert kinds == {
        "Namespace",
        "NetworkPolicy",
        "ResourceQuota",
        "LimitRange",
        "ConfigMap",
        "Service",
        "Pod",
    }


def test_the_namespace_is_labelled_with_sku_session_and_expiry(
    kube_api: KubeApiServer, settings: Any
) -> None:
    settings.PREVIEW_SUBNET_IDS = ["subnet-0a1b2c", "subnet-3d4e5f"]
    settings.PREVIEW_SECURITY_GROUP = "sg-0123456789abcdef0"
    expires_at = time.time() + 600

    start(make_request(sku_slug="Pixel Fonts & Co_", expires_at=expires_at))

    [namespace] = posted(kube_api, "namespaces")
    assert namespace["metadata"] == {
        "name": NAMESPACE,
        "labels": {
            "app.kubernetes.io/managed-by": "marketplace-previews",
            "marketplace.preview/session": SESSION,
            "marketplace.preview/sku": "Pixel-Fonts-Co",
            "marketplace.preview/expires": str(int(expires_at) + 1),
            "pod-security.kubernetes.io/enforce": "restricted",
        },
        "annotations": {
            "marketplace.preview/subnet-ids": "subnet-0a1b2c,subnet-3d4e5f",
            "marketplace.preview/security-group": "sg-0123456789abcdef0",
        },
    }


def test_without_subnets_or_security_group_there_are_no_annotations(
    kube_api: KubeApiServer,
) -> None:
    start()

    [namespace] = posted(kube_api, "namespaces")
    [pod] = posted(kube_api, "pods")
    assert "annotations" not in namespace["metadata"]
    assert "annotations" not in pod["metadata"]
    assert "nodeSelector" not in pod["spec"]
    assert "tolerations" not in pod["spec"]
    assert "runtimeClassName" not in pod["spec"]


def test_the_network_policy_lets_in_the_platform_only_and_nothing_out_without_material(
    kube_api: KubeApiServer, settings: Any
) -> None:
    # Storage CIDRs are set (the fixture), but there is nothing to fetch: no egress at all,
    # not the platform, not DNS, not storage.
    settings.PREVIEW_KUBE_PLATFORM_NAMESPACE = "shop-web"

    start()

    [policy] = posted(kube_api, "networkpolicies")
    assert policy["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "shop-web"}
                        }
                    }
                ],
                "ports": [{"protocol": "TCP", "port": 8080}],
            }
        ],
        "egress": [],
    }
    [pod] = posted(kube_api, "pods")
    assert "hostAliases" not in pod["spec"]


def test_the_quota_and_the_limit_range(kube_api: KubeApiServer, settings: Any) -> None:
    settings.PREVIEW_KUBE_CPU = "250m"
    settings.PREVIEW_KUBE_MEMORY = "128Mi"

    start()

    [quota] = posted(kube_api, "resourcequotas")
    [limit_range] = posted(kube_api, "limitranges")
    assert quota["spec"]["hard"] == {
        "pods": "2",
        "requests.cpu": "500m",
        "limits.cpu": "500m",
        "requests.memory": str(256 * 1024 * 1024),
        "limits.memory": str(256 * 1024 * 1024),
        "persistentvolumeclaims": "0",
        "services.loadbalancers": "0",
        "services.nodeports": "0",
    }
    amounts = {"cpu": "250m", "memory": "128Mi"}
    assert limit_range["spec"] == {
        "limits": [
            {"type": "Container", "default": amounts, "defaultRequest": amounts, "max": amounts}
        ]
    }


def test_the_pod_runs_unprivileged_read_only_and_no_longer_than_the_ttl(
    kube_api: KubeApiServer, settings: Any
) -> None:
    settings.PREVIEW_SANDBOX_TMPFS_BYTES = 8 * 1024 * 1024
    settings.PREVIEW_SUBNET_IDS = ["subnet-0a1b2c"]
    settings.PREVIEW_SECURITY_GROUP = "sg-0123456789abcdef0"
    settings.PREVIEW_KUBE_NODE_POOL = "previews"

    start(make_request(expires_at=time.time() + 600))

    [pod] = posted(kube_api, "pods")
    spec = pod["spec"]
    assert spec["activeDeadlineSeconds"] == 600
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65534,
        "runAsGroup": 65534,
        "fsGroup": 65534,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for container in [*spec["initContainers"], *spec["containers"]]:
        assert container["image"] == "registry.example.com/marketplace/preview-runtime:1"
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["privileged"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"] == {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"cpu": "500m", "memory": "256Mi"},
        }
    [main] = spec["containers"]
    assert main["command"] == COMMAND
    assert main["workingDir"] == "/preview"
    assert main["env"] == [
        {"name": "PREVIEW_PORT", "value": "8080"},
        {"name": "HOME", "value": SANDBOX_TMP},
    ]
    assert main["volumeMounts"] == [
        {"name": "material", "mountPath": "/preview", "readOnly": True},
        {"name": "tmp", "mountPath": SANDBOX_TMP},
    ]
    assert main["readinessProbe"]["tcpSocket"] == {"port": 8080}
    # Only the init container sees the file list (and its URLs), and may write /preview.
    [fetch] = spec["initContainers"]
    assert fetch["volumeMounts"] == [
        {"name": "material", "mountPath": "/preview"},
        {"name": "fetch", "mountPath": "/fetch", "readOnly": True},
    ]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": str(8 * 1024 * 1024)}
    assert "sizeLimit" in volumes["material"]["emptyDir"]
    assert volumes["fetch"]["configMap"]["name"] == "preview-material"
    assert pod["metadata"]["annotations"] == {
        "marketplace.preview/subnet-ids": "subnet-0a1b2c",
        "marketplace.preview/security-group": "sg-0123456789abcdef0",
    }
    assert spec["nodeSelector"] == {"marketplace.preview/pool": "previews"}
    assert spec["tolerations"] == [
        {
            "key": "marketplace.preview/pool",
            "operator": "Equal",
            "value": "previews",
            "effect": "NoSchedule",
        }
    ]
    # What the API's Pod Security admission checks, checked once more here.
    assert kube_api.pod_security_restricted(pod) == []


def test_the_service_selects_the_sessions_pod(kube_api: KubeApiServer) -> None:
    start()

    [service] = posted(kube_api, "services")
    [pod] = posted(kube_api, "pods")
    assert service["metadata"]["name"] == "preview"
    assert service["spec"]["ports"] == [
        {"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080}
    ]
    selector = service["spec"]["selector"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert selector["marketplace.preview/session"] == SESSION


# --- the material -------------------------------------------------------------------------------


def test_local_file_storage_cannot_give_the_pod_files_and_nothing_is_created(
    kube_api: KubeApiServer,
) -> None:
    name = default_storage.save("previews/index.html", ContentFile(b"<h1>hi</h1>"))
    files = (MaterialFile("index.html", name, hashlib.sha256(b"<h1>hi</h1>").hexdigest(), 11),)

    with pytest.raises(ProvisionFailed, match="presigned URL"):
        start(make_request(files=files))

    assert kube_api.requests == []


def test_without_files_the_file_list_is_empty(kube_api: KubeApiServer) -> None:
    start()

    [config_map] = posted(kube_api, "configmaps")
    assert config_map["immutable"] is True
    assert json.loads(config_map["data"]["files.json"]) == []
    assert config_map["data"]["fetch.py"] == Path(fetch.__file__).read_text()


@pytest.mark.s3
def test_the_init_container_fetches_presigned_files_and_checks_them(
    kube_api: KubeApiServer, s3_storage: Any, settings: Any, tmp_path: Path
) -> None:
    settings.PREVIEW_KUBE_STORAGE_CIDRS = ["127.0.0.0/8", "10.0.5.0/24"]
    contents = {"index.html": b"<h1>preview</h1>", "fonts/pixel.ttf": b"\x00\x01font" * 100}
    files = []
    for path, data in contents.items():
        key = default_storage.save(f"previews/material/{path}", ContentFile(data))
        files.append(MaterialFile(path, key, hashlib.sha256(data).hexdigest(), len(data)))

    before = time.time()
    start(make_request(files=tuple(files)), timeout=30.0)
    after = time.time()

    [config_map] = posted(kube_api, "configmaps")
    listing = json.loads(config_map["data"]["files.json"])
    assert [(item["path"], item["sha256"], item["size"]) for item in listing] == [
        (f.path, f.sha256, f.size) for f in files
    ]
    # Presigned for the start's timeout and no longer (not the storage's 300 s): the main
    # container can reach storage too.
    for item in listing:
        query = parse_qs(urlsplit(item["url"]).query)
        assert "Signature" in query, item["url"]
        assert int(before) + 30 <= int(query["Expires"][0]) <= after + 30
    # The only way out: the storage CIDRs, on the URLs' port (moto's; 443 on S3). The storage
    # host is an address already, so there is nothing to alias.
    [policy] = posted(kube_api, "networkpolicies")
    assert policy["spec"]["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "127.0.0.0/8"}}, {"ipBlock": {"cidr": "10.0.5.0/24"}}],
            "ports": [{"protocol": "TCP", "port": urlsplit(s3_storage.endpoint).port}],
        }
    ]
    [pod] = posted(kube_api, "pods")
    assert "hostAliases" not in pod["spec"]
    # The script the init container runs, run here on what the ConfigMap holds.
    fetch = tmp_path / "fetch"
    fetch.mkdir()
    for key, value in config_map["data"].items():
        (fetch / key).write_text(value)
    target = tmp_path / "preview"
    target.mkdir()
    done = subprocess.run(
        [sys.executable, "-I", "-B", fetch / "fetch.py", fetch / "files.json", target],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for path, data in contents.items():
        assert (target / path).read_bytes() == data
        assert (target / path).stat().st_mode & 0o777 == 0o444

    # A file changed in storage after it was recorded is refused, and the message names the
    # path but never the URL (it ends up in the Pod's status).
    s3_storage.client.put_object(Bucket=s3_storage.name, Key=files[0].storage_key, Body=b"evil")
    again = tmp_path / "again"
    again.mkdir()
    refused = subprocess.run(
        [sys.executable, "-I", "-B", fetch / "fetch.py", fetch / "files.json", again],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert "index.html does not match its recorded SHA-256" in refused.stderr
    assert "X-Amz" not in refused.stderr


def _storage_named(settings: Any, bucket: Any, host: str) -> None:
    """The default storage: `bucket`'s moto server, reached by the name `host`."""
    endpoint = urlsplit(bucket.endpoint)._replace(netloc=f"{host}:{urlsplit(bucket.endpoint).port}")
    settings.STORAGES = {
        **settings.STORAGES,
        "default": s3_storage_config(
            bucket=bucket.name, endpoint_url=endpoint.geturl(), region="us-east-1", kms_key_id=""
        ),
    }


def _material(data: bytes = b"<h1>hi</h1>") -> tuple[MaterialFile, ...]:
    key = default_storage.save("previews/material/index.html", ContentFile(data))
    return (MaterialFile("index.html", key, hashlib.sha256(data).hexdigest(), len(data)),)


@pytest.mark.s3
def test_a_storage_host_by_name_is_resolved_at_the_start_and_given_as_host_aliases(
    kube_api: KubeApiServer, s3_storage: Any, settings: Any
) -> None:
    # The Pod has no DNS: the worker resolves the host, keeps its addresses inside the CIDRs
    # (localhost's ::1 is not) and writes them in the Pod's /etc/hosts.
    settings.PREVIEW_KUBE_STORAGE_CIDRS = ["127.0.0.0/8"]
    _storage_named(settings, s3_storage, "localhost")

    start(make_request(files=_material()))

    [config_map] = posted(kube_api, "configmaps")
    [item] = json.loads(config_map["data"]["files.json"])
    assert urlsplit(item["url"]).hostname == "localhost"
    [pod] = posted(kube_api, "pods")
    assert pod["spec"]["hostAliases"] == [{"ip": "127.0.0.1", "hostnames": ["localhost"]}]
    [policy] = posted(kube_api, "networkpolicies")
    assert policy["spec"]["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "127.0.0.0/8"}}],
            "ports": [{"protocol": "TCP", "port": urlsplit(s3_storage.endpoint).port}],
        }
    ]


@pytest.mark.s3
def test_storage_outside_the_cidrs_fails_before_anything_is_created(
    kube_api: KubeApiServer, s3_storage: Any, settings: Any
) -> None:
    # The fixture's CIDRs are S3's ranges; moto is on loopback: the sandbox could not reach it.
    files = _material()

    with pytest.raises(ProvisionFailed) as failed:
        start(make_request(files=files))
    settings.PREVIEW_KUBE_STORAGE_CIDRS = []
    with pytest.raises(ProvisionFailed) as without_cidrs:
        start(make_request(files=files))

    for detail in (failed.value.detail, without_cidrs.value.detail):
        assert detail == (
            "the storage host 127.0.0.1 (127.0.0.1) is not inside "
            "MARKETPLACE_PREVIEW_KUBE_STORAGE_CIDRS: the sandbox could not fetch its material"
        )
    assert kube_api.requests == []


@pytest.mark.s3
def test_a_storage_host_that_does_not_resolve_fails_before_anything_is_created(
    kube_api: KubeApiServer, s3_storage: Any, settings: Any
) -> None:
    files = _material()
    _storage_named(settings, s3_storage, "storage.invalid")

    with pytest.raises(ProvisionFailed, match=r"the storage host storage\.invalid could not be"):
        start(make_request(files=files))

    assert kube_api.requests == []


@pytest.mark.s3
def test_material_whose_file_list_passes_a_config_map_fails_before_anything_is_created(
    kube_api: KubeApiServer, s3_storage: Any, settings: Any
) -> None:
    settings.PREVIEW_KUBE_STORAGE_CIDRS = ["127.0.0.0/8"]
    # Presigning is computed locally: the files need not be in the bucket for this.
    files = tuple(
        MaterialFile(f"assets/{n:04}.png", f"previews/material/assets/{n:04}.png", "0" * 64, 1)
        for n in range(4000)
    )

    with pytest.raises(ProvisionFailed, match="more than a ConfigMap holds"):
        start(make_request(files=files))

    assert kube_api.requests == []


def test_the_fetch_script_refuses_an_unsafe_path(tmp_path: Path) -> None:
    listing = tmp_path / "files.json"
    listing.write_text(
        json.dumps([{"path": "../etc/x", "url": "http://127.0.0.1:9/x", "sha256": "0", "size": 1}])
    )
    script = tmp_path / "fetch.py"
    script.write_text(fetch_script())

    done = subprocess.run(
        [sys.executable, "-I", "-B", script, listing, tmp_path / "out"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == 1
    assert "unsafe path" in done.stderr
    assert not (tmp_path / "etc").exists()


def test_an_unsafe_material_path_fails_before_anything_is_created(
    kube_api: KubeApiServer,
) -> None:
    files = (MaterialFile("../escape", "previews/x", "0" * 64, 1),)

    with pytest.raises(ProvisionFailed, match="unsafe path"):
        start(make_request(files=files))

    assert kube_api.requests == []


# --- failures -----------------------------------------------------------------------------------


def test_a_pod_that_never_gets_ready_fails_and_its_namespace_is_deleted(
    kube_api: KubeApiServer,
) -> None:
    kube_api.pod_mode = "pending"
    kube_api.waiting_reason = "ImagePullBackOff"
    began = time.monotonic()

    with pytest.raises(ProvisionFailed) as failed:
        start(timeout=1.0)

    assert time.monotonic() - began < 4
    assert "not ready within 1 s" in failed.value.detail
    assert "init container fetch: ImagePullBackOff" in failed.value.detail
    assert kube_api.objects("namespaces") == []
    deletes = [r for r in kube_api.requests if r.method == "DELETE"]
    assert [(r.path, r.query) for r in deletes] == [
        (f"/api/v1/namespaces/{NAMESPACE}", {"propagationPolicy": ["Background"]})
    ]


def test_a_failed_fetch_fails_the_start_saying_why(kube_api: KubeApiServer) -> None:
    kube_api.pod_mode = "fail"

    with pytest.raises(ProvisionFailed) as failed:
        start()

    assert "init container fetch exited with status 1" in failed.value.detail
    assert "does not match its recorded SHA-256" in failed.value.detail
    assert kube_api.objects("namespaces") == []


def test_a_command_that_exits_fails_the_start(kube_api: KubeApiServer) -> None:
    kube_api.pod_mode = "crash"

    with pytest.raises(ProvisionFailed, match="container preview exited with status 2"):
        start()

    assert kube_api.objects("namespaces") == []


def test_an_image_that_can_never_be_pulled_fails_at_once(kube_api: KubeApiServer) -> None:
    kube_api.pod_mode = "pending"
    kube_api.waiting_reason = "InvalidImageName"
    began = time.monotonic()

    with pytest.raises(ProvisionFailed, match="InvalidImageName"):
        start(timeout=10.0)

    assert time.monotonic() - began < 3
    assert kube_api.objects("namespaces") == []


def test_the_api_down_fails_the_start_and_leaves_nothing(kube_api: KubeApiServer) -> None:
    kube_api.refuse_connections()

    with pytest.raises(ProvisionFailed, match="the Kubernetes API could not create the namespace"):
        start()

    kube_api.restore()
    assert kube_api.objects("namespaces") == []


def test_an_api_error_half_way_deletes_what_was_made(kube_api: KubeApiServer) -> None:
    kube_api.fail_next(1, 500, method="POST", path_contains="/pods")

    with pytest.raises(ProvisionFailed) as failed:
        start()

    assert failed.value.detail.startswith(
        f"the Kubernetes API could not create the Pod in {NAMESPACE}: 500"
    )
    assert kube_api.objects("namespaces") == []
    assert kube_api.objects("services") == []


def test_a_namespace_that_cannot_be_deleted_after_a_failure_says_so(
    kube_api: KubeApiServer,
) -> None:
    kube_api.pod_mode = "fail"
    kube_api.fail_next(1, 503, method="DELETE")

    with pytest.raises(ProvisionFailed) as failed:
        start()

    assert "and the namespace could not be deleted: deleting the namespace" in failed.value.detail
    # Left for the collector, which finds it by its labels.
    assert [r.environment_id for r in KubernetesProvisioner().running()] == [ENV_ID]


def test_an_existing_namespace_is_not_taken_over_or_deleted(kube_api: KubeApiServer) -> None:
    start()

    with pytest.raises(ProvisionFailed, match="exists already"):
        start()

    assert [ns["metadata"]["name"] for ns in kube_api.objects("namespaces")] == [NAMESPACE]
    assert len(kube_api.objects("pods", NAMESPACE)) == 1


@pytest.mark.parametrize(
    ("overrides", "settings_changes", "message"),
    [
        ({"environment_id": "Not_Valid"}, {}, "not a valid namespace name"),
        ({}, {"PREVIEW_KUBE_NAMESPACE_PREFIX": "x" * 50}, "not a valid namespace name"),
        ({"expires_at": 1.0}, {}, "expired before its sandbox could start"),
        ({"command": []}, {}, "no command"),
        ({}, {"PREVIEW_KUBE_IMAGE": ""}, "MARKETPLACE_PREVIEW_KUBE_IMAGE is not set"),
        ({}, {"PREVIEW_KUBE_CPU": "lots"}, "MARKETPLACE_PREVIEW_KUBE_CPU='lots'"),
        ({}, {"PREVIEW_KUBE_STORAGE_CIDRS": ["s3"]}, "STORAGE_CIDRS has 's3'"),
    ],
)
def test_a_request_or_settings_that_cannot_start_fail_before_any_call(
    kube_api: KubeApiServer,
    settings: Any,
    overrides: dict[str, Any],
    settings_changes: dict[str, Any],
    message: str,
) -> None:
    for name, value in settings_changes.items():
        setattr(settings, name, value)

    with pytest.raises(ProvisionFailed, match=message):
        start(make_request(**overrides))

    assert kube_api.requests == []


# --- teardown, alive, running -------------------------------------------------------------------


def test_teardown_deletes_the_namespace_and_is_idempotent(kube_api: KubeApiServer) -> None:
    start()
    provisioner = KubernetesProvisioner()

    assert provisioner.teardown(ENV_ID) is True
    assert kube_api.objects("namespaces") == []
    assert kube_api.objects("pods") == []
    [delete] = [r for r in kube_api.requests if r.method == "DELETE"]
    assert delete.query == {"propagationPolicy": ["Background"]}
    assert provisioner.teardown(ENV_ID) is False
    # Never started, or not an id at all.
    assert provisioner.teardown("0123abcd") is False
    assert provisioner.teardown("../../kube-system") is False


def test_teardown_of_a_namespace_still_terminating_succeeds(kube_api: KubeApiServer) -> None:
    kube_api.keep_terminating = True
    start()
    provisioner = KubernetesProvisioner()

    assert provisioner.teardown(ENV_ID) is True
    assert provisioner.teardown(ENV_ID) is True  # the API answers 409 while it terminates
    assert provisioner.running() == []  # already going, so not listed as running


def test_teardown_with_the_api_down_raises_for_a_retry(kube_api: KubeApiServer) -> None:
    start()
    kube_api.down = True

    with pytest.raises(KubernetesApiError, match=f"deleting the namespace {NAMESPACE} failed: 500"):
        KubernetesProvisioner().teardown(ENV_ID)

    kube_api.down = False
    assert KubernetesProvisioner().teardown(ENV_ID) is True


def test_alive_reads_the_pod(kube_api: KubeApiServer) -> None:
    start()
    provisioner = KubernetesProvisioner()

    assert provisioner.alive(ENV_ID) is True
    kube_api.pod_set(NAMESPACE, phase="Failed", reason="DeadlineExceeded")
    assert provisioner.alive(ENV_ID) is False
    kube_api.refuse_connections()
    assert provisioner.alive(ENV_ID) is None
    kube_api.restore()
    provisioner.teardown(ENV_ID)
    assert provisioner.alive(ENV_ID) is False


def test_running_lists_this_platforms_sandboxes_with_their_expiry(
    kube_api: KubeApiServer, settings: Any
) -> None:
    expires = time.time() + 900
    start(make_request(environment_id="aaaa1111", expires_at=expires))
    start(make_request(environment_id="bbbb2222", session_id="other-session"))
    # Another platform on the same cluster (its own prefix) is not this one's to collect.
    settings.PREVIEW_KUBE_NAMESPACE_PREFIX = "staging-preview-"
    start(make_request(environment_id="cccc3333"))
    settings.PREVIEW_KUBE_NAMESPACE_PREFIX = "preview-"

    found = sorted(KubernetesProvisioner().running(), key=lambda r: r.environment_id)

    assert [r.environment_id for r in found] == ["aaaa1111", "bbbb2222"]
    assert found[0] == Running(environment_id="aaaa1111", expires_at=float(int(expires) + 1))
    [listing] = [
        r for r in kube_api.requests if r.method == "GET" and r.path == "/api/v1/namespaces"
    ]
    assert listing.query["labelSelector"] == ["app.kubernetes.io/managed-by=marketplace-previews"]


def test_running_with_the_api_down_raises(kube_api: KubeApiServer) -> None:
    kube_api.refuse_connections()

    with pytest.raises(KubernetesApiError, match="listing the preview namespaces failed"):
        KubernetesProvisioner().running()


def test_a_rotated_token_is_read_on_the_next_request(
    kube_api: KubeApiServer, settings: Any
) -> None:
    provisioner = KubernetesProvisioner()
    start()
    kube_api.token = "rotated-token"
    Path(settings.PREVIEW_KUBE_TOKEN_FILE).write_text("rotated-token\n")

    assert provisioner.teardown(ENV_ID) is True


def test_provisioner_get_names_it(kube_api: KubeApiServer) -> None:
    assert isinstance(provisioner_get("kubernetes"), KubernetesProvisioner)


# --- names and the stand-in itself --------------------------------------------------------------


def test_names_and_label_values() -> None:
    assert namespace_name("preview-", "9f3c2a7e") == "preview-9f3c2a7e"
    assert namespace_name("preview-", "a" * 33) is None
    assert namespace_name("preview-", "-abc") is None
    assert namespace_name("Preview-", "abc") is None
    assert label_value("Pixel Fonts & Co_") == "Pixel-Fonts-Co"
    assert label_value("_" * 80) == ""
    assert len(label_value("a" * 80)) == 63


def test_the_docs_rbac_and_admission_policies_are_valid_objects() -> None:
    # What an operator applies from docs/previews-kubernetes.md#rbac: each object parses and
    # passes the strict schema (no unknown field) of each version the stand-in checks. The CEL
    # itself is evaluated only by an API server (`status.typeChecking` after applying).
    from tests.support.kube_api.checks import schema_problems

    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("\n## RBAC\n") : text.index("\n## How the web reaches a sandbox")]
    blocks = re.findall(r"^```yaml\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    objects = [o for block in blocks for o in yaml.safe_load_all(block)]

    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("ClusterRole", "marketplace-previews"),
        ("ClusterRoleBinding", "marketplace-previews"),
        ("ValidatingAdmissionPolicy", "marketplace-previews-namespaces"),
        ("ValidatingAdmissionPolicy", "marketplace-previews-objects"),
        ("ValidatingAdmissionPolicy", "marketplace-previews-pods"),
        ("ValidatingAdmissionPolicy", "marketplace-previews-services"),
        ("ValidatingAdmissionPolicyBinding", "marketplace-previews-namespaces"),
        ("ValidatingAdmissionPolicyBinding", "marketplace-previews-objects"),
        ("ValidatingAdmissionPolicyBinding", "marketplace-previews-pods"),
        ("ValidatingAdmissionPolicyBinding", "marketplace-previews-services"),
    ]
    problems = {(o["kind"], o["metadata"]["name"]): schema_problems(o) for o in objects}
    assert {key: found for key, found in problems.items() if found} == {}
    kinds = [o["kind"] for o in objects]
    policies = {
        o["metadata"]["name"] for o, k in zip(objects, kinds, strict=True) if k.endswith("Policy")
    }
    bound = {
        o["spec"]["policyName"]
        for o, k in zip(objects, kinds, strict=True)
        if k == "ValidatingAdmissionPolicyBinding"
    }
    assert bound == policies
    for o in objects:
        if o["kind"] == "ValidatingAdmissionPolicy":
            assert o["spec"]["failurePolicy"] == "Fail"
            # `namespace` is a CEL keyword: a variable of that name would not compile.
            assert "namespace" not in {v["name"] for v in o["spec"].get("variables", [])}
        if o["kind"] == "ValidatingAdmissionPolicyBinding":
            assert o["spec"]["validationActions"] == ["Deny"]


def test_the_stand_in_refuses_what_the_api_server_refuses(kube_api: KubeApiServer) -> None:
    # The zero-violation checks above mean something only if the stand-in does refuse: an
    # unknown field (schema), a bad label value (the server's rules), a root Pod (Pod Security).
    kube_api.violations_expected = True
    headers = {"Authorization": f"Bearer {kube_api.token}", "Content-Type": "application/json"}

    def post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(  # noqa: S310 - the stand-in, on loopback
            kube_api.url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "ns1", "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
    }
    assert post("/api/v1/namespaces", namespace)[0] == 201
    assert post("/api/v1/namespaces", namespace)[1]["reason"] == "AlreadyExists"
    unknown = {**namespace, "metadata": {"name": "ns2"}, "spec": {"bogus": True}}
    status, answer = post("/api/v1/namespaces", unknown)
    assert (status, answer["reason"]) == (422, "Invalid")
    bad_label = {**namespace, "metadata": {"name": "ns3", "labels": {"a": "not valid!"}}}
    assert post("/api/v1/namespaces", bad_label)[0] == 422
    root_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    status, answer = post("/api/v1/namespaces/ns1/pods", root_pod)
    assert (status, answer["reason"]) == (403, "Forbidden")
    assert 'violates PodSecurity "restricted:latest"' in answer["message"]
    assert post("/api/v1/namespaces/missing/pods", root_pod)[0] == 404
    assert sorted({v.split(":")[0] for v in kube_api.violations}) == [
        "Namespace 'ns2' (422)",
        "Namespace 'ns3' (422)",
        "Pod 'root' (403)",
    ]
