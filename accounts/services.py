"""The audited writes on people: buyers, their API tokens, staff accounts and their access;
and the runtime maintenance switch, which staff turn through a two-person approval."""

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.chain import format_time
from audit.services import audit_append
from marketplace.actors import Actor, ActorType
from marketplace.exceptions import InvalidInput
from marketplace.maintenance import maintenance_switch_on, maintenance_switch_store
from marketplace.models import ApiToken, User


def _user_subject(user: User) -> tuple[str, str]:
    # Users are named by uuid, as actors are, so "what X did" and "what was done to X" match.
    return ("user", str(user.uuid))


@transaction.atomic
def buyer_get_or_create(*, email: str, actor: Actor) -> tuple[User, bool]:
    """Finds the account for an email (case-insensitively) or creates a buyer for it.

    Records `buyer.created` when it creates one. The email stays out of the audit log (which
    can never be edited); the event names the buyer by uuid.
    """
    return _buyer_get_or_create(email=email, actor=actor)


def _buyer_get_or_create(*, email: str, actor: Actor) -> tuple[User, bool]:
    """buyer_get_or_create in the caller's transaction (no savepoint of its own)."""
    email = email.strip()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput(
            f"{email!r} is not a valid email address.", errors={"email": ["Enter a valid email."]}
        ) from None
    existing = User.objects.filter(email__iexact=email).first()
    if existing is not None:
        return existing, False
    user = User.objects.create_user(email=email)
    audit_append(actor=actor, action="buyer.created", subject=_user_subject(user), data={})
    return user, True


@transaction.atomic
def api_token_issue(
    *, email: str, actor: Actor, name: str = "", expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """Issues a token for the account with this email, creating a buyer if there is none.

    Returns the stored token and the token itself, which is not kept and cannot be shown again.
    Records `api_token.issued` with the token's hint, never the token.
    """
    user, _ = _buyer_get_or_create(email=email, actor=actor)
    if not user.is_active:
        raise InvalidInput(f"The account {user.email} is deactivated; it cannot get a token.")
    token = ApiToken.generate()
    api_token = ApiToken.objects.create(
        user=user,
        name=name,
        digest=ApiToken.digest_of(token),
        hint=token[:10],
        expires_at=expires_at,
    )
    audit_append(
        actor=actor,
        action="api_token.issued",
        subject=api_token,
        data={
            "user": str(user.uuid),
            "name": name,
            "hint": api_token.hint,
            "expires_at": format_time(expires_at) if expires_at else None,
        },
    )
    return api_token, token


@transaction.atomic
def api_token_revoke(*, token_pk: int, actor: Actor) -> bool:
    """Revokes a token; returns False if it already was (and records nothing then).
    Records `api_token.revoked`."""
    token = ApiToken.objects.select_for_update().select_related("user").get(pk=token_pk)
    if token.revoked_at is not None:
        return False
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit_append(
        actor=actor,
        action="api_token.revoked",
        subject=token,
        data={"user": str(token.user.uuid), "hint": token.hint},
    )
    return True


@dataclass(frozen=True)
class Access:
    """What an account may do: the flags and staff roles an audit event compares."""

    is_active: bool
    is_staff: bool
    is_superuser: bool
    roles: frozenset[str]

    @classmethod
    def of(cls, user: User) -> "Access":
        return cls(
            user.is_active,
            user.is_staff,
            user.is_superuser,
            frozenset(user.groups.values_list("name", flat=True)),
        )

    def grants_beyond(self, before: "Access") -> bool:
        """Whether this access gives more than `before`: a role added, or staff or superuser
        turned on. Made by hand, such a change waits for a second person (`role.grant`);
        taking access away does not."""
        return bool(
            (self.is_staff and not before.is_staff)
            or (self.is_superuser and not before.is_superuser)
            or (self.roles - before.roles)
        )


def account_access_record(*, user: User, before: Access | None, actor: Actor) -> bool:
    """Records what changed in the account's access since `before` (None: the account is
    new), in the caller's transaction (the admin's save): `account.created` with its access
    for a new account, otherwise `account.access_changed` with the flags that changed and the
    roles added and removed. Records nothing, and answers False, when nothing did."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("account_access_record must run in the transaction of the change")
    after = Access.of(user)
    subject = _user_subject(user)
    if before is None:
        audit_append(
            actor=actor,
            action="account.created",
            subject=subject,
            data={
                "is_active": after.is_active,
                "is_staff": after.is_staff,
                "is_superuser": after.is_superuser,
                "roles": sorted(after.roles),
            },
        )
        return True
    changes: dict[str, object] = {
        flag: getattr(after, flag)
        for flag in ("is_active", "is_staff", "is_superuser")
        if getattr(before, flag) != getattr(after, flag)
    }
    if added := sorted(after.roles - before.roles):
        changes["roles_added"] = added
    if removed := sorted(before.roles - after.roles):
        changes["roles_removed"] = removed
    if changes:
        audit_append(actor=actor, action="account.access_changed", subject=subject, data=changes)
    return bool(changes)


def account_password_set_record(*, user: User, actor: Actor) -> None:
    """Records `account.password_set` (never the password) in the caller's transaction."""
    audit_append(actor=actor, action="account.password_set", subject=_user_subject(user), data={})


@transaction.atomic
def staff_account_ensure(
    *, email: str, password: str | None, roles: list[str], actor: Actor
) -> tuple[User, bool]:
    """The superuser staff account with this email, created if there is none, in at least
    `roles`. `password` sets its password (kept as it is when None, unless the account is new;
    a new account without one cannot log in with a password). Answers the account and whether
    it was created. Records what changed as the admin's edits are recorded
    (`account.created`, `account.access_changed`, `account.password_set`).
    """
    user = User.objects.select_for_update().filter(email__iexact=email).first()
    before = Access.of(user) if user is not None else None
    if user is None:
        user = User.objects.create_user(email=email, password=password)
    elif password is not None:
        user.set_password(password)
    user.is_staff = user.is_superuser = True
    user.save()
    user.groups.add(*Group.objects.filter(name__in=roles))
    account_access_record(user=user, before=before, actor=actor)
    if before is not None and password is not None:
        account_password_set_record(user=user, actor=actor)
    return user, before is None


# --- Access granted through an approval ---------------------------------------------------------


FLAGS = ("is_staff", "is_superuser")


def role_grant_params(*, user: User, target: Access) -> dict[str, Any]:
    """The `role.grant` request's params for giving `user` the access `target`: the change
    from the access they have now (roles to add and remove, the flags that change), so that
    applying it later changes only that."""
    now = Access.of(user)
    return {
        "user": str(user.uuid),
        "roles_added": sorted(target.roles - now.roles),
        "roles_removed": sorted(now.roles - target.roles),
        "flags": {
            flag: getattr(target, flag)
            for flag in FLAGS
            if getattr(target, flag) != getattr(now, flag)
        },
    }


def _grant_user(params: dict[str, Any]) -> User:
    try:
        user = User.objects.filter(uuid=UUID(str(params.get("user")))).first()
    except ValueError:
        user = None
    if user is None:
        raise InvalidInput(f"There is no account {params.get('user')}.")
    return user


def role_grant_beneficiary(params: dict[str, Any]) -> int:
    """The account a `role.grant` changes (it may not approve its own grant)."""
    return _grant_user(params).pk


def _grant_change(params: dict[str, Any]) -> tuple[set[str], set[str], dict[str, bool]]:
    if "roles" in params:
        # Filed before grants were changes: applying the access it set would bring back what
        # was taken away since.
        raise InvalidInput("This grant sets the access as a whole; file it again.")
    return set(params["roles_added"]), set(params["roles_removed"]), dict(params["flags"])


def role_grant_check(params: dict[str, Any]) -> None:
    _grant_user(params)
    added, removed, flags = _grant_change(params)
    if set(flags) - set(FLAGS) or not all(isinstance(on, bool) for on in flags.values()):
        raise InvalidInput(f"A grant changes only {' and '.join(FLAGS)}.")
    if not (added or removed or flags):
        raise InvalidInput("The grant changes nothing.")
    roles = added | removed
    missing = roles - set(Group.objects.filter(name__in=roles).values_list("name", flat=True))
    if missing:
        raise InvalidInput(f"There is no role {', '.join(sorted(missing))}.")


def role_grant_summary(params: dict[str, Any]) -> str:
    user = _grant_user(params)
    added, removed, flags = _grant_change(params)
    changes = []
    if added:
        changes.append(f"adds {', '.join(sorted(added))}")
    if removed:
        changes.append(f"removes {', '.join(sorted(removed))}")
    for flag, label in (("is_staff", "staff"), ("is_superuser", "superuser")):
        if flag in flags:
            changes.append(f"{label} {'on' if flags[flag] else 'off'}")
    return (
        f"Change the access of {user.email}: {'; '.join(changes)}. Only this changes when it "
        "is approved; what else changes meanwhile stays as it is then."
    )


@transaction.atomic
def account_access_grant(*, params: dict[str, Any], actor: Actor) -> dict[str, Any]:
    """Applies an approved `role.grant`: adds and removes the roles of `params` and sets the
    flags it names, to the account's access as it is now (access taken away since the request
    was filed stays away; two grants compose). Recorded as the admin's edits are
    (`account.access_changed`)."""
    user = User.objects.select_for_update().get(pk=_grant_user(params).pk)
    added, removed, flags = _grant_change(params)
    before = Access.of(user)
    for flag in FLAGS:
        if flag in flags:
            setattr(user, flag, bool(flags[flag]))
    user.save(update_fields=["is_staff", "is_superuser"])
    user.groups.add(*Group.objects.filter(name__in=added))
    user.groups.remove(*Group.objects.filter(name__in=removed))
    changed = account_access_record(user=user, before=before, actor=actor)
    return {"user": str(user.uuid), "changed": changed}


# --- The maintenance switch ----------------------------------------------------------------------


@transaction.atomic
def maintenance_switch_set(*, on: bool, actor: Actor) -> bool:
    """Turns the runtime maintenance switch on or off; records `maintenance.on` or
    `maintenance.off` when it changed (nothing when it already was so). MAINTENANCE_MODE=1 in
    the environment keeps the mode on whatever the switch says."""
    changed_by = UUID(actor.id) if actor.type in (ActorType.STAFF, ActorType.BUYER) else None
    changed = maintenance_switch_store(on=on, changed_by=changed_by)
    if changed:
        audit_append(
            actor=actor,
            action="maintenance.on" if on else "maintenance.off",
            subject=("runtime_switch", "maintenance"),
            data={"forced_by_environment": bool(settings.MAINTENANCE_MODE)},
        )
    return changed


def _maintenance_check(on: bool) -> Any:
    def check(params: dict[str, Any]) -> None:
        if maintenance_switch_on() == on:
            raise InvalidInput(f"The maintenance switch is {'on' if on else 'off'} already.")

    return check


def _maintenance_summary(on: bool) -> Any:
    def summary(params: dict[str, Any]) -> str:
        if on:
            return (
                "Turn maintenance mode on: checkout answers 503 and no license, delivery or "
                "proof is issued until it is turned off again; reads go on."
            )
        forced = (
            " MAINTENANCE_MODE=1 in the environment still keeps it on."
            if settings.MAINTENANCE_MODE
            else ""
        )
        return (
            "Turn maintenance mode off: checkout and fulfilment resume (the sweep issues what "
            f"waited).{forced}"
        )

    return summary


def _maintenance_apply(on: bool) -> Any:
    def apply(params: dict[str, Any], actor: Actor) -> dict[str, Any]:
        return {"maintenance": on, "changed": maintenance_switch_set(on=on, actor=actor)}

    return apply


MAINTENANCE_KINDS = {
    kind: (_maintenance_summary(on), _maintenance_apply(on), _maintenance_check(on))
    for kind, on in (("maintenance.on", True), ("maintenance.off", False))
}


def _provider_placeholder_email(issuer: str, subject: str) -> str:
    # User.email is required and unique; a buyer the provider gave no verified address gets
    # one that can never receive mail (.invalid, RFC 2606) and never collides with a real one.
    digest = hashlib.sha256(f"{issuer}\n{subject}".encode()).hexdigest()[:32]
    return f"oidc-{digest}@users.invalid"


def buyer_of_identity(*, issuer: str, subject: str, email: str | None) -> User:
    """The account of the provider's (issuer, subject), created as a buyer on first use.

    Never matched by e-mail: the verified address (`email`, None when the provider does not
    vouch for one) is only taken for a new buyer when no account here has it already, since
    whoever holds that account did not sign in as this subject. Records `buyer.created` (by
    uuid, the address stays out of the audit log) with `identity.linked`. Two first requests
    at once create one buyer: the identity's unique (issuer, subject) refuses the second."""
    from accounts.models import Identity

    for _ in range(2):
        identity = (
            Identity.objects.select_related("user").filter(issuer=issuer, subject=subject).first()
        )
        if identity is not None:
            return identity.user
        address = email.strip() if email else ""
        if not address or User.objects.filter(email__iexact=address).exists():
            address = _provider_placeholder_email(issuer, subject)
        actor = Actor.service("identity-provider")
        try:
            with transaction.atomic():
                user = User.objects.create_user(email=address)
                Identity.objects.create(
                    user=user, issuer=issuer, subject=subject, email=email or ""
                )
                audit_append(
                    actor=actor, action="buyer.created", subject=_user_subject(user), data={}
                )
                audit_append(
                    actor=actor,
                    action="identity.linked",
                    subject=_user_subject(user),
                    data={"issuer": issuer, "subject": subject},
                )
            return user
        except IntegrityError:
            continue  # another request created it first: read it back
    raise RuntimeError(f"no account could be made for {subject} at {issuer}")


def group_permissions(group: Group) -> list[str]:
    """The group's permissions as `app_label.codename`, sorted."""
    return sorted(
        f"{app}.{codename}"
        for app, codename in group.permissions.values_list("content_type__app_label", "codename")
    )


def group_change_record(
    *,
    group: Group,
    before: tuple[str, list[str]] | None,
    actor: Actor,
    deleted: bool = False,
) -> bool:
    """Records a group made, changed or deleted by hand, in the caller's transaction:
    `group.created` (name, permissions), `group.changed` (name before and after, permissions
    added and removed), `group.deleted` (name, permissions). Nothing when nothing changed."""
    subject = ("group", str(group.pk))
    permissions = group_permissions(group)
    if deleted:
        audit_append(
            actor=actor,
            action="group.deleted",
            subject=subject,
            data={"name": group.name, "permissions": permissions},
        )
        return True
    if before is None:
        audit_append(
            actor=actor,
            action="group.created",
            subject=subject,
            data={"name": group.name, "permissions": permissions},
        )
        return True
    name_before, permissions_before = before
    added = sorted(set(permissions) - set(permissions_before))
    removed = sorted(set(permissions_before) - set(permissions))
    if name_before == group.name and not added and not removed:
        return False
    audit_append(
        actor=actor,
        action="group.changed",
        subject=subject,
        data={"name": group.name, "was": name_before, "added": added, "removed": removed},
    )
    return True


def identity_link(*, email: str, issuer: str, subject: str, actor: Actor) -> Any:
    """Binds the existing account `email` to (issuer, subject) at the identity provider, an
    operator's decision for an account the first provider sign-in refused (`email_in_use`).
    Records `identity.linked`. A superuser account is refused: whoever holds that identity at
    the provider would get the superuser flag, which roles from the provider never set or take
    away; make such a person's access from roles instead."""
    from accounts.models import Identity

    user = User.objects.filter(email__iexact=email.strip()).first()
    if user is None:
        raise InvalidInput(
            f"There is no account {email!r}.", errors={"email": ["No such account."]}
        )
    if user.is_superuser:
        raise InvalidInput(f"{user.email} is a superuser: it is not linked to a provider identity.")
    if not subject or len(subject) > 255 or not issuer:
        raise InvalidInput("The issuer and the subject (at most 255 characters) are needed.")
    try:
        with transaction.atomic():
            identity = Identity.objects.create(
                user=user, issuer=issuer, subject=subject, email=user.email
            )
            audit_append(
                actor=actor,
                action="identity.linked",
                subject=_user_subject(user),
                data={"issuer": issuer, "subject": subject},
            )
    except IntegrityError:
        raise InvalidInput(f"{subject} at {issuer} is linked to an account already.") from None
    return identity
