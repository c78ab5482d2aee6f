"""Partners and their manifest-signing keys."""

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse

from catalog import services
from catalog.admin.service_errors import UniqueConstraintMessages, add_service_error
from catalog.models import (
    KeyStatus,
    Partner,
    PartnerKey,
)
from catalog.partner_scope import is_partner_staff, partner_of_staff, partner_scope
from marketplace.actors import Actor
from marketplace.admin.helpers import URL_FIELDS_HTTPS, as_form_error, reason_action
from marketplace.exceptions import ApplicationError

# --- Partners ----------------------------------------------------------------------------------


class PartnerKeyForm(forms.ModelForm):
    # Not the model's field: a PEM key is longer than the base64 the key is registered as.
    public_key = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2, "cols": 60}),
        help_text="Base64 of the raw 32-byte Ed25519 key, or a PEM public key.",
    )

    class Meta:
        model = PartnerKey
        fields = ["key_id", "public_key"]

    def clean_public_key(self) -> str:
        try:
            return services.public_key_base64(self.cleaned_data["public_key"])
        except ApplicationError as exc:
            raise as_form_error(exc) from None


class PartnerKeyAddForm(PartnerKeyForm):
    """A Partner staff member registers a key for their own partner (PartnerKeyAdmin): the
    partner is theirs, never one the request names."""

    bound_partner: Partner  # PartnerKeyAdmin.get_form sets it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance.partner = self.bound_partner

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        # What registering the key would refuse, at its fields (services.partner_key_build).
        try:
            services.partner_key_build(
                partner=self.bound_partner, key_id=data["key_id"], public_key=data["public_key"]
            )
        except ApplicationError as exc:
            add_service_error(self, exc)
        return data


class PartnerKeyFormSet(UniqueConstraintMessages, BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        # What registering each new key would refuse, at its fields (services.partner_key_build).
        for form in self.forms:
            if form.instance.pk is not None or not form.has_changed() or form.errors:
                continue
            try:
                services.partner_key_build(
                    partner=self.instance,
                    key_id=form.cleaned_data["key_id"],
                    public_key=form.cleaned_data["public_key"],
                )
            except ApplicationError as exc:
                add_service_error(form, exc)


class PartnerKeyInline(admin.TabularInline):
    model = PartnerKey
    form = PartnerKeyForm
    formset = PartnerKeyFormSet
    extra = 0
    can_delete = False
    fields = ["key_id", "public_key", "fingerprint", "status", "created_at", "revoked_reason"]
    readonly_fields = ["fingerprint", "status", "created_at", "revoked_reason"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return self.readonly_fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a registered key is never edited; revoke it and register another


@admin.register(Partner)
class PartnerAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "kind", "is_active", "key_count", "sku_count", "updated_at"]
    list_filter = ["kind", "is_active"]
    search_fields = ["name", "slug", "legal_name", "contract_reference", "payout_reference"]
    # Explicit: Meta.ordering does not reach the annotated (GROUP BY) queryset, and the
    # partner autocomplete pages through it.
    ordering = ["slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [PartnerKeyInline]
    formfield_overrides = URL_FIELDS_HTTPS
    fieldsets = [
        (None, {"fields": ["name", "slug", "kind", "is_active"]}),
        ("Contact", {"fields": ["legal_name", "contact_email", "website", "description"]}),
        ("Contract and payout", {"fields": ["contract_reference", "payout_reference"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Partner]:
        # Partner staff see their own partner only: here, in the partner choosers
        # (autocomplete) and by URL.
        partners = partner_scope(
            super().get_queryset(request), request.user, lambda partner: Q(pk=partner.pk)
        )
        return partners.annotate(
            key_count=Count("keys", distinct=True), sku_count=Count("skus", distinct=True)
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not is_partner_staff(request.user) and super().has_add_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The partner record (contract, payout) is Content ops'; Partner staff register their
        # keys on Partner signing keys instead.
        return not is_partner_staff(request.user) and super().has_change_permission(request, obj)

    @admin.display(description="Keys", ordering="key_count")
    def key_count(self, partner: Partner) -> int:
        return partner.key_count

    @admin.display(description="SKUs", ordering="sku_count")
    def sku_count(self, partner: Partner) -> int:
        return partner.sku_count

    def save_model(self, request: HttpRequest, obj: Partner, form: Any, change: bool) -> None:
        services.partner_save(partner=obj, actor=Actor.of_user(request.user))

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not PartnerKey:
            super().save_formset(request, form, formset, change)
            return
        # The admin's change message reads what formset.save() would have recorded.
        actor = Actor.of_user(request.user)
        formset.new_objects = [
            services.partner_key_register(
                partner=form.instance,
                key_id=key_form.cleaned_data["key_id"],
                public_key=key_form.cleaned_data["public_key"],
                actor=actor,
            )
            for key_form in formset.forms
            if key_form.instance.pk is None and key_form.has_changed()
        ]
        formset.changed_objects = []
        formset.deleted_objects = []

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # partners are deactivated, never deleted: orders and royalties refer to them


@admin.register(PartnerKey)
class PartnerKeyAdmin(admin.ModelAdmin):
    list_display = ["__str__", "partner", "status", "fingerprint", "created_at", "revoked_at"]
    list_filter = ["status", "partner"]
    search_fields = ["key_id", "fingerprint", "partner__slug", "partner__name"]
    list_select_related = ["partner"]
    readonly_fields = [
        "partner",
        "key_id",
        "algorithm",
        "public_key",
        "fingerprint",
        "status",
        "created_at",
        "revoked_at",
        "revoked_reason",
    ]
    actions = ["revoke"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[PartnerKey]:
        return partner_scope(
            super().get_queryset(request), request.user, lambda partner: Q(partner=partner)
        )

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        if not is_partner_staff(request.user):
            return list(self.list_filter)
        return ["status", ("partner", admin.RelatedOnlyFieldListFilter)]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Content ops and Security register keys on their partner's page. Partner staff, who
        # may not change the partner, register their own partner's keys here.
        if not is_partner_staff(request.user) or partner_of_staff(request.user) is None:
            return False
        return super().has_add_permission(request)

    def get_fields(self, request: HttpRequest, obj: PartnerKey | None = None) -> list[str]:
        if obj is None:
            return ["key_id", "public_key"]
        return super().get_fields(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: PartnerKey | None = None) -> list[str]:
        return [] if obj is None else list(self.readonly_fields)

    def get_form(
        self,
        request: HttpRequest,
        obj: PartnerKey | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> Any:
        if obj is None:
            partner = partner_of_staff(request.user)
            if partner is None:
                raise PermissionDenied
            kwargs["form"] = type(
                PartnerKeyAddForm.__name__, (PartnerKeyAddForm,), {"bound_partner": partner}
            )
        return super().get_form(request, obj, change=change, **kwargs)

    def save_model(self, request: HttpRequest, obj: PartnerKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        partner = partner_of_staff(request.user)
        if partner is None:
            raise PermissionDenied
        key = services.partner_key_register(
            partner=partner,
            key_id=form.cleaned_data["key_id"],
            public_key=form.cleaned_data["public_key"],
            actor=Actor.of_user(request.user),
        )
        # The admin's messages and log entry name the key the service registered.
        for field in PartnerKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(key, field.attname))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(
        description="Revoke selected keys (SKUs they verified leave sale)", permissions=["change"]
    )
    def revoke(self, request: HttpRequest, queryset: QuerySet[PartnerKey]) -> HttpResponse | None:
        return reason_action(
            self,
            request,
            queryset.filter(status=KeyStatus.ACTIVE),
            title="Revoke partner signing keys",
            apply=lambda key, reason: services.partner_key_revoke(
                key_pk=key.pk, reason=reason, actor=Actor.of_user(request.user)
            ),
            done="{count} key(s) revoked.",
        )
