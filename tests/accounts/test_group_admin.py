"""Groups in the admin: the roles' permissions are the code's and cannot be edited or deleted
there; other groups' changes are audited."""

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission

from audit.models import AuditEvent
from marketplace.roles import FINANCE, ROLE_PERMISSIONS

pytestmark = pytest.mark.django_db


def perm(name: str) -> Permission:
    app_label, codename = name.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


def test_a_group_made_and_changed_by_hand_is_audited(admin_client: Any):
    view_order = perm("orders.view_order")
    admin_client.post(
        "/admin/auth/group/add/", {"name": "Auditors", "permissions": [view_order.pk]}
    )
    group = Group.objects.get(name="Auditors")
    view_sku = perm("catalog.view_sku")

    response = admin_client.post(
        f"/admin/auth/group/{group.pk}/change/",
        {"name": "Auditors", "permissions": [view_sku.pk]},
    )

    assert response.status_code == 302
    created = AuditEvent.objects.get(action="group.created")
    assert created.data == {"name": "Auditors", "permissions": ["orders.view_order"]}
    changed = AuditEvent.objects.get(action="group.changed")
    assert changed.data == {
        "name": "Auditors",
        "was": "Auditors",
        "added": ["catalog.view_sku"],
        "removed": ["orders.view_order"],
    }


def test_a_role_groups_permissions_cannot_be_edited_or_the_group_deleted(admin_client: Any):
    finance = Group.objects.get(name=FINANCE)
    before = set(finance.permissions.values_list("pk", flat=True))

    admin_client.post(
        f"/admin/auth/group/{finance.pk}/change/",
        {"name": "Finance", "permissions": [perm("marketplace.view_user").pk]},
    )
    delete = admin_client.post(f"/admin/auth/group/{finance.pk}/delete/", {"post": "yes"})

    assert set(finance.permissions.values_list("pk", flat=True)) == before
    assert len(before) == len(ROLE_PERMISSIONS[FINANCE])
    assert delete.status_code == 403
    assert Group.objects.filter(name=FINANCE).exists()
    assert not AuditEvent.objects.filter(action__startswith="group.").exists()
