"""Staff roles. Each is a group whose permissions are kept equal to this table.

Later features add their permissions here; `migrate` applies the table, so a role never
drifts from the code that relies on it.
"""

from typing import Any

from django.apps import apps as global_apps
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import AnonymousUser, Group, Permission
from django.db.models import Q

CONTENT_OPS = "Content ops"
FINANCE = "Finance"
SECURITY = "Security"
SUPPORT = "Support"
MODERATOR = "Moderator"
# Bound to one partner by the identity provider's partner claim (accounts.Identity.partner_slug).
PARTNER_STAFF = "Partner staff"

_CATALOG_MODELS = ("partner", "partnerkey", "category", "sku", "royaltysplit")
_AUDIT_VIEW = ("audit.view_auditevent", "audit.view_checkpoint", "audit.view_auditexport")
_ORDERS_FINANCE_VIEW = (
    "orders.view_order",
    "orders.view_financeposting",
    "orders.view_webhookevent",
    "orders.view_webhookattempt",
    "orders.view_royaltyline",
    "orders.view_refund",
    "marketplace.view_ledgerentry",
)
# Partner webhook messages, deliveries and attempts (orders.partner_webhooks).
_PARTNER_WEBHOOKS_VIEW = (
    "orders.view_partnerwebhookmessage",
    "orders.view_partnerwebhookdelivery",
    "orders.view_partnerwebhookattempt",
)

# Licenses, deliveries with their download links and log, and proofs: read in the admin by
# Security and Support. Revoking, reissuing and regenerating are service calls allowed by role
# (LICENSING_ACTION_ROLES), not edits of a row: no add/change permission stands for them.
_LICENSING_VIEW = (
    "licensing.view_license",
    "licensing.view_delivery",
    "licensing.view_downloadlog",
    "licensing.view_downloadsession",
    "licensing.view_proof",
)

# Preview material, its files, sessions and pauses: read in the admin. Revoking, isolating,
# lifting a pause, withdrawing and the preview switch are service calls allowed by role
# (PREVIEW_ACTION_ROLES); uploading material is the add permission of its (immutable) rows.
_PREVIEWS_VIEW = (
    "previews.view_previewmaterial",
    "previews.view_previewfile",
    "previews.view_previewsession",
    "previews.view_previewpause",
)
_PREVIEWS_MATERIAL = (
    "previews.view_previewmaterial",
    "previews.view_previewfile",
    "previews.add_previewmaterial",
)

ROLE_PERMISSIONS: dict[str, set[str]] = {
    CONTENT_OPS: {
        *(
            f"catalog.{verb}_{model}"
            for model in _CATALOG_MODELS
            for verb in ("add", "change", "view")
        ),
        "catalog.delete_royaltysplit",
        "catalog.delete_category",
        "catalog.view_artifact",
        "catalog.publish_sku",
        "catalog.view_moderationreview",  # why a SKU waits; deciding is the Moderator's
        *_PREVIEWS_VIEW,
        *_PREVIEWS_MATERIAL,
    },
    FINANCE: {
        "catalog.view_partner",
        "catalog.view_sku",
        "catalog.view_royaltysplit",
        *_AUDIT_VIEW,
        # Refunds, Finance and webhook replays, and delivery holds check the Finance group
        # itself (ORDER_ACTION_ROLES): they are service calls, not edits of a row.
        *_ORDERS_FINANCE_VIEW,
        "orders.view_partnerwebhookendpoint",
        *_PARTNER_WEBHOOKS_VIEW,
        # Pending approvals (refunds above the threshold); deciding is by role
        # (accounts.approvals), not a model permission.
        "accounts.view_approvalrequest",
    },
    SECURITY: {
        "catalog.view_partner",
        "catalog.view_partnerkey",
        "catalog.change_partnerkey",
        "catalog.view_sku",
        "catalog.view_artifact",
        "marketplace.view_user",
        "marketplace.view_apitoken",
        "marketplace.change_apitoken",
        # Rotating and revoking keys, and pushing to the Kernel, check the Security group
        # itself (has_role): no model permission stands for them.
        "marketplace.view_signingkey",
        *_AUDIT_VIEW,
        "audit.add_checkpoint",  # the audit log's "Sign a checkpoint now" button
        "audit.view_kernelcursor",
        *_LICENSING_VIEW,
        # Pending approvals (keys, maintenance, roles, break-glass) and break-glass grants;
        # deciding and revoking are by role (accounts.approvals), not a model permission.
        "accounts.view_approvalrequest",
        "accounts.view_breakglassgrant",
        *_PREVIEWS_VIEW,
    },
    SUPPORT: {
        "catalog.view_partner",
        "catalog.view_category",
        "catalog.view_sku",
        "marketplace.view_user",
        *_AUDIT_VIEW,
        "orders.view_order",
        "orders.view_webhookevent",
        "orders.view_webhookattempt",
        "orders.view_partnerwebhookendpoint",
        *_PARTNER_WEBHOOKS_VIEW,
        *_LICENSING_VIEW,
        *_PREVIEWS_VIEW,
    },
    # They read the review queue; deciding (approve, reject, override) checks the Moderator
    # group itself (catalog.services.moderation_decide), not a model permission.
    MODERATOR: {
        "catalog.view_partner",
        "catalog.view_category",
        "catalog.view_sku",
        "catalog.view_artifact",
        "catalog.view_moderationreview",
    },
    # Every admin page these reach is narrowed to the member's own partner
    # (catalog.partner_scope): their drafts, keys, sales and royalty lines. Publishing, splits
    # and the partner record stay with Content ops.
    PARTNER_STAFF: {
        "catalog.view_partner",
        "catalog.view_sku",
        "catalog.add_sku",
        "catalog.change_sku",
        "catalog.view_partnerkey",
        "catalog.add_partnerkey",
        "catalog.view_artifact",
        "catalog.view_royaltysplit",
        "orders.view_order",
        "orders.view_royaltyline",
        # Their partner's webhook endpoints (registered and changed through the services), and
        # the messages and attempts sent to them.
        "orders.view_partnerwebhookendpoint",
        "orders.add_partnerwebhookendpoint",
        "orders.change_partnerwebhookendpoint",
        *_PARTNER_WEBHOOKS_VIEW,
        # Their SKUs' preview material and sessions (without the buyers), not the pauses.
        *_PREVIEWS_MATERIAL,
        "previews.view_previewsession",
    },
}

# Every role the identity provider's claims may map to (MARKETPLACE_OIDC_ROLE_MAP).
ROLE_NAMES = frozenset(ROLE_PERMISSIONS)

# Who may take each staff action on orders (orders.admin), by role; superusers may take all.
# The services they call write the change and its audit event.
ORDER_ACTION_ROLES: dict[str, tuple[str, ...]] = {
    "refund": (FINANCE,),
    "replay_finance": (FINANCE,),
    "replay_webhook": (FINANCE,),
    "hold_delivery": (FINANCE, SUPPORT),
    "release_delivery": (FINANCE, SUPPORT),
}


# Who may take each staff action on licenses and deliveries (licensing.admin), by role;
# superusers may take all. Security answers for what a license proves, so only it revokes and
# reissues; Support may also regenerate a package (a buyer's download limit, a lost package).
LICENSING_ACTION_ROLES: dict[str, tuple[str, ...]] = {
    "revoke_license": (SECURITY,),
    "reissue_license": (SECURITY,),
    "regenerate_delivery": (SECURITY, SUPPORT),
}


# Who may take each staff action on previews (previews.admin, previews_revoke --as), by role;
# superusers may take all. Partner staff manage their own SKUs' material only
# (catalog.partner_scope); isolating the pool for every SKU also waits for a second Security
# member (the `previews.isolate_all` approval).
PREVIEW_ACTION_ROLES: dict[str, tuple[str, ...]] = {
    "manage_material": (CONTENT_OPS, PARTNER_STAFF),
    "revoke_session": (SECURITY, SUPPORT),
    "isolate_pool": (SECURITY,),
    "lift_pause": (SECURITY,),
}


def has_role(user: Any, *roles: str) -> bool:
    """An active staff user in one of `roles`, or a superuser."""
    if isinstance(user, AnonymousUser) or not (user.is_active and user.is_staff):
        return False
    return user.is_superuser or user.groups.filter(name__in=roles).exists()


def may_take_order_action(user: Any, action: str) -> bool:
    return has_role(user, *ORDER_ACTION_ROLES[action])


def may_take_licensing_action(user: Any, action: str) -> bool:
    return has_role(user, *LICENSING_ACTION_ROLES[action])


def may_take_preview_action(user: Any, action: str) -> bool:
    return has_role(user, *PREVIEW_ACTION_ROLES[action])


def roles_sync() -> None:
    for role, names in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        query = Q(pk__in=[])
        for name in names:
            app_label, codename = name.split(".")
            query |= Q(content_type__app_label=app_label, codename=codename)
        group.permissions.set(Permission.objects.filter(query))


def roles_sync_after_migrate(using: str = "default", **kwargs: Any) -> None:
    # post_migrate reaches this app before the apps listed after it have their permissions.
    for app_config in global_apps.get_app_configs():
        create_permissions(app_config, verbosity=0, using=using, apps=global_apps)
    roles_sync()
