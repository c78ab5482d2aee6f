"""SKUs: the form content ops publish with, splits inline, and the status actions."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from catalog import services
from catalog.admin.service_errors import UniqueConstraintMessages, add_service_error
from catalog.exceptions import InvalidSplits, TransitionRefused
from catalog.manifests import manifest_for
from catalog.models import ManifestStatus, Partner, RoyaltySplit, Sku, SkuStatus
from catalog.partner_scope import is_partner_staff, partner_of_staff, partner_scope
from catalog.selectors import sku_activation_blockers
from catalog.services import StoredArtifact
from marketplace.actors import Actor
from marketplace.admin.helpers import HttpsURLField, reason_action
from marketplace.exceptions import ApplicationError
from marketplace.models import User
from marketplace.money import format_amount


class RoyaltySplitFormSet(UniqueConstraintMessages, BaseInlineFormSet):
    # Shown, not offered (RoyaltySplitInline.get_formset): the admin takes the rows as they
    # are stored, so there is nothing to check or to save.
    read_only = False

    def shares(self) -> list[tuple[Partner, int]]:
        return [
            (form.cleaned_data["partner"], form.cleaned_data["basis_points"])
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]

    def clean(self) -> None:
        super().clean()
        if self.read_only or any(self.errors):
            return
        try:
            services.sku_splits_check(sku=self.instance, splits=self.shares())
        except InvalidSplits as exc:
            problems = (exc.errors or {}).get("splits", [exc.detail])
            raise forms.ValidationError([f"{capfirst(problem)}." for problem in problems]) from None
        except ApplicationError as exc:
            raise forms.ValidationError(exc.detail) from None


class RoyaltySplitInline(admin.TabularInline):
    model = RoyaltySplit
    formset = RoyaltySplitFormSet
    extra = 1
    fields = ["partner", "basis_points"]
    autocomplete_fields = ["partner"]
    verbose_name = "royalty split"
    verbose_name_plural = "Royalty splits (basis points, summing to 10,000)"

    def get_formset(self, request: HttpRequest, obj: Any = None, **kwargs: Any) -> Any:
        formset = super().get_formset(request, obj, **kwargs)
        formset.read_only = not self.has_change_permission(request, obj)
        return formset

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.status == SkuStatus.RETIRED:
            return False
        return super().has_change_permission(request, obj)

    has_add_permission = has_change_permission  # type: ignore[assignment]
    has_delete_permission = has_change_permission  # type: ignore[assignment]


class ArtifactFileInput(forms.FileInput):
    """The file input, with what is kept of an upload made when the form was sent back."""

    template_name = "catalog/widgets/artifact_file.html"

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs)
        self.kept: StoredArtifact | None = None

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        kept = self.kept
        context["widget"]["kept"] = kept and {
            "filename": kept.filename,
            "size": filesizeformat(kept.size),
            "sha256": kept.sha256,
        }
        return context


class SaveRefused(Exception):
    """A service refused the save after the form had validated (another change came first):
    the admin shows the form again with the refusal and the upload it kept."""

    def __init__(self, error: ApplicationError, *, kept_token: str) -> None:
        super().__init__(error.detail)
        self.error = error
        self.kept_token = kept_token


class SkuAdminForm(forms.ModelForm):
    artifact_file = forms.FileField(
        required=False,
        label="Upload artifact",
        help_text="Streamed to storage; its SHA-256 and size are computed on the way.",
        widget=ArtifactFileInput,
    )
    # The signed token of an upload kept while the form was sent back with errors
    # (services.artifact_keep): the file is not asked for again.
    artifact_kept = forms.CharField(required=False, widget=forms.HiddenInput)
    manifest_text = forms.CharField(
        required=False,
        label="Manifest",
        widget=forms.Textarea(attrs={"rows": 8, "cols": 90, "class": "vLargeTextField"}),
        help_text="The partner's signed manifest (JSON). It must name the artifact's SHA-256.",
    )

    class Meta:
        model = Sku
        fields = [
            "slug",
            "title",
            "summary",
            "description",
            "category",
            "partner",
            "version",
            "price_amount",
            "currency",
            "manifest_signature",
            "license_duration_days",
            "license_seats",
            "license_entitlements",
            "license_terms_url",
            "preview_ttl_seconds",
        ]
        widgets = {
            "manifest_signature": forms.Textarea(attrs={"rows": 2, "cols": 90}),
            "license_terms_url": forms.URLInput(attrs={"size": 60}),
        }
        field_classes = {"license_terms_url": HttpsURLField}
        labels = {"manifest_signature": "Manifest signature", "price_amount": "Price (minor units)"}

    # Who fills the form in (SkuAdmin.get_form sets it): the uploader of the artifact, and the
    # only user whose kept upload the form accepts.
    user: User | None = None
    # Set when the form comes back because a service refused the save (SkuAdmin.changeform_view).
    refusal: SaveRefused | None = None
    # The partner of a Partner staff member filling the form in (SkuAdmin.get_form): their SKU's
    # partner whatever the request says; the form has no partner field for them.
    bound_partner: Partner | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stored_artifact: StoredArtifact | None = None
        self.manifest: dict[str, Any] | None = None
        if self.bound_partner is not None:
            self.instance.partner = self.bound_partner
        if self.instance.manifest is not None and "manifest_text" in self.fields:
            self.initial["manifest_text"] = json.dumps(self.instance.manifest, indent=2)
        if "currency" in self.fields:
            self.fields["currency"].widget.attrs["style"] = "text-transform: uppercase"

    def clean_currency(self) -> str:
        return self.cleaned_data["currency"].upper()

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        manifest_changed = (
            bool({"manifest_text", "manifest_signature"} & set(self.changed_data))
            and "manifest_text" in self.fields
        )
        if manifest_changed:
            try:
                self.manifest, data["manifest_signature"] = services.manifest_check(
                    manifest=data.get("manifest_text", ""),
                    signature=data.get("manifest_signature", ""),
                )
            except ApplicationError as exc:
                add_service_error(self, exc, fields={"manifest": "manifest_text"})
        if "artifact_file" in self.fields:
            self._clean_artifact(data)
        return data

    def _clean_artifact(self, data: dict[str, Any]) -> None:
        """Stores a new upload at once, or takes the one kept from an earlier submit, so that
        if the form is sent back with errors (its own, the splits', the services') the upload
        is kept for the next submit rather than asked for again. A file never attached is
        deleted by the orphan sweep."""
        upload = data.get("artifact_file")
        token = data.get("artifact_kept", "")
        if self.refusal is not None and self.refusal.kept_token:
            # The upload of the refused save was stored then: keep that one.
            upload, token = None, self.refusal.kept_token
        if upload:
            try:
                stored = services.artifact_store(
                    content=upload,
                    filename=upload.name,
                    content_type=getattr(upload, "content_type", "") or "",
                )
            except ApplicationError as exc:
                add_service_error(self, exc, field="artifact_file")
                return
            if self.user is not None:
                self._keep(stored, services.artifact_keep(stored=stored, user=self.user))
            else:
                self.stored_artifact = stored
        elif token:
            if self.user is None:
                return
            try:
                stored = services.artifact_kept(token=token, user=self.user)
            except ApplicationError as exc:
                add_service_error(self, exc, field="artifact_file")
                self._set_data("artifact_kept", "")
                return
            self._keep(stored, token)

    def _keep(self, stored: StoredArtifact, token: str) -> None:
        # The token goes back unchanged once made: its age is the stored file's, which the
        # orphan sweep goes by.
        self.stored_artifact = stored
        self._set_data("artifact_kept", token)
        self.fields["artifact_file"].widget.kept = stored

    def _set_data(self, name: str, value: str) -> None:
        self.data = self.data.copy()
        self.data[self.add_prefix(name)] = value

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.refusal is not None:
            add_service_error(self, self.refusal.error)
        if self.errors:
            return
        # What the SKU service would refuse, at the fields it names, before anything is saved.
        try:
            services.sku_check(sku=self.instance)
        except ApplicationError as exc:
            add_service_error(self, exc)


@admin.register(Sku)
class SkuAdmin(admin.ModelAdmin):
    form = SkuAdminForm
    inlines = [RoyaltySplitInline]
    list_display = [
        "title",
        "slug",
        "partner",
        "category",
        "price",
        "status",
        "manifest_status",
        "artifact_hash",
        "updated_at",
    ]
    list_filter = ["status", "category", "partner", "currency", "manifest_status"]
    search_fields = ["slug", "title", "summary", "partner__name", "artifact__sha256"]
    list_select_related = ["partner", "category", "artifact"]
    autocomplete_fields = ["partner"]
    actions = ["activate", "suspend", "retire", "verify_manifest"]
    readonly_fields = [
        # Switched on and off with the SKU's preview material (Previews, Preview materials).
        "preview_enabled",
        "status",
        "status_reason",
        "status_changed_at",
        "activated_at",
        "readiness",
        "artifact_details",
        "manifest_status",
        "manifest_detail",
        "manifest_key_id",
        "manifest_checked_at",
        "manifest_to_sign",
        "created_at",
        "updated_at",
    ]

    def get_form(
        self, request: HttpRequest, obj: Sku | None = None, change: bool = False, **kwargs: Any
    ) -> type[SkuAdminForm]:
        form = super().get_form(request, obj, change=change, **kwargs)
        refusal = getattr(request, "sku_save_refusal", None)
        return type(
            form.__name__,
            (form,),
            {
                "user": request.user,
                "refusal": refusal,
                "bound_partner": partner_of_staff(request.user),
            },
        )

    # --- Partner staff: their partner's SKUs only, and only drafts to change ---

    def get_queryset(self, request: HttpRequest) -> QuerySet[Sku]:
        return partner_scope(
            super().get_queryset(request), request.user, lambda partner: Q(partner=partner)
        )

    def get_list_filter(self, request: HttpRequest) -> list[Any]:
        if not is_partner_staff(request.user):
            return list(self.list_filter)
        # The partners of the rows they see (their own), not every partner's name.
        return [
            ("partner", admin.RelatedOnlyFieldListFilter) if name == "partner" else name
            for name in self.list_filter
        ]

    def _of_another_partner(self, request: HttpRequest, sku: Sku) -> bool:
        if not is_partner_staff(request.user):
            return False
        partner = partner_of_staff(request.user)
        return partner is None or sku.partner_id != partner.pk

    def has_view_permission(self, request: HttpRequest, obj: Sku | None = None) -> bool:
        if obj is not None and self._of_another_partner(request, obj):
            return False
        return super().has_view_permission(request, obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        if is_partner_staff(request.user) and partner_of_staff(request.user) is None:
            return False
        return super().has_add_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Sku | None = None) -> bool:
        # A SKU past its draft is Content ops' to change (on sale, suspended, retired), not the
        # partner's.
        if (
            obj is not None
            and is_partner_staff(request.user)
            and (self._of_another_partner(request, obj) or obj.status != SkuStatus.DRAFT)
        ):
            return False
        return super().has_change_permission(request, obj)

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except SaveRefused as refused:
            # The admin's transaction rolled back, so nothing of the save was written: the
            # same form comes back with the service's refusal at its fields.
            request.sku_save_refusal = refused  # type: ignore[attr-defined]
            return super().changeform_view(request, object_id, form_url, extra_context)

    @contextmanager
    def _refusal_shown(self, form: SkuAdminForm) -> Iterator[None]:
        try:
            yield
        except ApplicationError as exc:
            kept = form.data.get(form.add_prefix("artifact_kept"), "")
            raise SaveRefused(exc, kept_token=kept) from exc

    def get_fieldsets(self, request: HttpRequest, obj: Sku | None = None) -> list[Any]:
        files = ["artifact_file", "artifact_kept", "artifact_details", "manifest_to_sign",
                 "manifest_text", "manifest_signature", "manifest_status", "manifest_detail",
                 "manifest_key_id", "manifest_checked_at"]  # fmt: skip
        if obj is None:
            files = ["artifact_file", "artifact_kept", "manifest_text", "manifest_signature"]
        elif not obj.files_can_change():
            files = [
                name
                for name in files
                if name not in ("artifact_file", "artifact_kept", "manifest_text")
            ]
        sections = [
            (None, {"fields": ["title", "slug", "partner", "category", "version"]}),
            ("Description", {"fields": ["summary", "description"]}),
            ("Price", {"fields": ["price_amount", "currency"]}),
            ("Artifact and manifest", {"fields": files}),
            (
                "License terms",
                {
                    "fields": [
                        "license_duration_days",
                        "license_seats",
                        "license_entitlements",
                        "license_terms_url",
                    ]
                },
            ),
            ("Preview", {"fields": ["preview_enabled", "preview_ttl_seconds"]}),
        ]
        if obj is not None:
            sections.insert(
                1,
                (
                    "Status",
                    {
                        "fields": [
                            "status",
                            "status_reason",
                            "readiness",
                            "activated_at",
                            "status_changed_at",
                        ]
                    },
                ),
            )
        return sections

    def get_readonly_fields(self, request: HttpRequest, obj: Sku | None = None) -> list[str]:
        fields = list(self.readonly_fields)
        if is_partner_staff(request.user):
            fields.append("partner")  # their own, set by the form (SkuAdminForm.bound_partner)
        if obj is None:
            return fields
        # Shown, not offered: what the services would refuse to change on this SKU.
        fixed = services.sku_fixed_fields(obj)
        if not obj.files_can_change():
            fixed |= {"manifest_signature"}
        return [
            *fields,
            *(name for name in SkuAdminForm.Meta.fields if name in fixed and name not in fields),
        ]

    def get_prepopulated_fields(self, request: HttpRequest, obj: Sku | None = None) -> dict:
        return {"slug": ["title"]} if obj is None else {}

    @admin.display(description="Price", ordering="price_amount")
    def price(self, sku: Sku) -> str:
        return format_amount(sku.price_amount, sku.currency)

    @admin.display(description="Artifact SHA-256")
    def artifact_hash(self, sku: Sku) -> str:
        return f"{sku.artifact.sha256[:12]}…" if sku.artifact else "—"

    @admin.display(description="Artifact")
    def artifact_details(self, sku: Sku) -> SafeString | str:
        artifact = sku.artifact
        if artifact is None:
            return "No artifact uploaded."
        integrity = {True: "intact", False: "CHANGED IN STORAGE", None: "not checked yet"}[
            artifact.integrity_ok
        ]
        return format_html(
            "{} — {} bytes<br>SHA-256 <code>{}</code><br>uploaded {} by {}<br>integrity: {}",
            artifact.filename,
            f"{artifact.size:,}",
            artifact.sha256,
            artifact.uploaded_at.strftime("%Y-%m-%d %H:%M UTC"),
            artifact.uploaded_by or "—",
            integrity,
        )

    @admin.display(description="Manifest to sign")
    def manifest_to_sign(self, sku: Sku) -> SafeString | str:
        if sku.artifact is None:
            return "Upload the artifact first."
        return format_html(
            "<pre style='white-space: pre-wrap'>{}</pre>",
            json.dumps(manifest_for(sku, sku.artifact), indent=2),
        )

    @admin.display(description="Ready to activate?")
    def readiness(self, sku: Sku) -> SafeString | str:
        if sku.status == SkuStatus.ACTIVE:
            return "On sale."
        blockers = sku_activation_blockers(sku)
        if not blockers:
            return "Yes: activation will re-verify the manifest and put the SKU on sale."
        return format_html(
            "<ul style='margin-left:0'>{}</ul>",
            format_html_join("", "<li>{}</li>", ((reason,) for reason in blockers)),
        )

    def save_model(self, request: HttpRequest, obj: Sku, form: SkuAdminForm, change: bool) -> None:
        if is_partner_staff(request.user):
            partner = partner_of_staff(request.user)
            if partner is None:
                raise PermissionDenied
            obj.partner = partner  # never what the request names
        actor = Actor.of_user(request.user)
        with self._refusal_shown(form):
            services.sku_save(sku=obj, actor=actor)
            if form.stored_artifact is not None:
                services.sku_artifact_attach(
                    sku_id=obj.pk,
                    stored=form.stored_artifact,
                    actor=actor,
                    uploaded_by=request.user,
                )
            if form.manifest is not None:
                services.sku_manifest_attach(
                    sku_id=obj.pk,
                    manifest=form.manifest,
                    signature=form.cleaned_data["manifest_signature"],
                    actor=actor,
                )
        obj.refresh_from_db()

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not RoyaltySplit:
            super().save_formset(request, form, formset, change)
            return
        # The admin's change message reads what formset.save() would have recorded; the service
        # replaces the splits as a whole, so every old one goes and the new ones are added.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        if formset.read_only or not formset.has_changed():
            return
        formset.deleted_objects = [split_form.instance for split_form in formset.initial_forms]
        with self._refusal_shown(form):
            formset.new_objects = services.sku_splits_set(
                sku_id=form.instance.pk, splits=formset.shares(), actor=Actor.of_user(request.user)
            )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # retire instead: orders and licenses refer to SKUs

    def has_publish_permission(self, request: HttpRequest) -> bool:
        # Putting on sale stays with Content ops, even for a member who also holds their role.
        return not is_partner_staff(request.user) and request.user.has_perm("catalog.publish_sku")

    @admin.action(description="Activate selected SKUs (put on sale)", permissions=["publish"])
    def activate(self, request: HttpRequest, queryset: QuerySet[Sku]) -> None:
        activated = 0
        actor = Actor.of_user(request.user)
        for sku in queryset.order_by("pk"):
            try:
                services.sku_activate(sku_id=sku.pk, actor=actor)
            except TransitionRefused as exc:
                reasons = "; ".join(exc.reasons)
                self.message_user(request, f"Not activated: {sku.slug}: {reasons}.", messages.ERROR)
            except ApplicationError as exc:
                self.message_user(
                    request, f"Not activated: {sku.slug}: {exc.detail}", messages.ERROR
                )
            else:
                activated += 1
        if activated:
            self.message_user(request, f"{activated} SKU(s) activated.", messages.SUCCESS)

    @admin.action(description="Suspend selected SKUs (take off sale)", permissions=["publish"])
    def suspend(self, request: HttpRequest, queryset: QuerySet[Sku]) -> HttpResponse | None:
        return reason_action(
            self,
            request,
            queryset,
            title="Suspend SKUs",
            apply=lambda sku, reason: services.sku_suspend(
                sku_id=sku.pk, reason=reason, actor=Actor.of_user(request.user)
            ),
            done="{count} SKU(s) suspended.",
        )

    @admin.action(description="Retire selected SKUs (for good)", permissions=["publish"])
    def retire(self, request: HttpRequest, queryset: QuerySet[Sku]) -> HttpResponse | None:
        return reason_action(
            self,
            request,
            queryset,
            title="Retire SKUs",
            apply=lambda sku, reason: services.sku_retire(
                sku_id=sku.pk, reason=reason, actor=Actor.of_user(request.user)
            ),
            done="{count} SKU(s) retired.",
        )

    @admin.action(description="Verify manifests now", permissions=["change"])
    def verify_manifest(self, request: HttpRequest, queryset: QuerySet[Sku]) -> None:
        actor = Actor.of_user(request.user)
        if is_partner_staff(request.user):
            # A verdict can take a SKU off sale: Partner staff verify their drafts only.
            others = queryset.exclude(status=SkuStatus.DRAFT).order_by("pk")
            for sku in others:
                self.message_user(
                    request, f"{sku.slug}: not a draft; Content ops verify it.", messages.WARNING
                )
            queryset = queryset.filter(status=SkuStatus.DRAFT)
        for sku in queryset.order_by("pk"):
            check = services.sku_manifest_verify(sku_id=sku.pk, actor=actor)
            if check is None:
                self.message_user(request, f"{sku.slug}: no manifest to verify.", messages.WARNING)
            else:
                status = ManifestStatus(check.status)
                level = messages.SUCCESS if status == ManifestStatus.VERIFIED else messages.ERROR
                self.message_user(request, f"{sku.slug}: {status.label} — {check.detail}", level)
