"""SKUs: the form content ops publish with, splits inline, and the status actions."""

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from catalog import services
from catalog.exceptions import TransitionRefused
from catalog.manifests import manifest_for, manifest_parse
from catalog.models import Partner, RoyaltySplit, Sku, SkuStatus
from catalog.selectors import sku_activation_blockers
from catalog.services import StoredArtifact
from marketplace.actors import Actor
from marketplace.admin.helpers import HttpsURLField, reason_action
from marketplace.exceptions import ApplicationError
from marketplace.money import format_amount


class RoyaltySplitFormSet(BaseInlineFormSet):
    def shares(self) -> list[tuple[Partner, int]]:
        return [
            (form.cleaned_data["partner"], form.cleaned_data["basis_points"])
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        on_sale = self.instance.pk is not None and self.instance.status == SkuStatus.ACTIVE
        problems = services.splits_problems(self.shares(), on_sale=on_sale)
        if problems:
            raise forms.ValidationError([f"{capfirst(problem)}." for problem in problems])


class RoyaltySplitInline(admin.TabularInline):
    model = RoyaltySplit
    formset = RoyaltySplitFormSet
    extra = 1
    fields = ["partner", "basis_points"]
    autocomplete_fields = ["partner"]
    verbose_name = "royalty split"
    verbose_name_plural = "Royalty splits (basis points, summing to 10,000)"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.status == SkuStatus.RETIRED:
            return False
        return super().has_change_permission(request, obj)

    has_add_permission = has_change_permission  # type: ignore[assignment]
    has_delete_permission = has_change_permission  # type: ignore[assignment]


class SkuAdminForm(forms.ModelForm):
    artifact_file = forms.FileField(
        required=False,
        label="Upload artifact",
        help_text="Streamed to storage; its SHA-256 and size are computed on the way.",
    )
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
            "preview_enabled",
            "preview_ttl_seconds",
        ]
        widgets = {
            "manifest_signature": forms.Textarea(attrs={"rows": 2, "cols": 90}),
            "license_terms_url": forms.URLInput(attrs={"size": 60}),
        }
        field_classes = {"license_terms_url": HttpsURLField}
        labels = {"manifest_signature": "Manifest signature", "price_amount": "Price (minor units)"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stored_artifact: StoredArtifact | None = None
        self.manifest: dict[str, Any] | None = None
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
            text = data.get("manifest_text", "").strip()
            if not text:
                self.add_error("manifest_text", "Paste the manifest that goes with the signature.")
            else:
                try:
                    self.manifest = manifest_parse(text)
                except ApplicationError as exc:
                    self.add_error("manifest_text", exc.detail)
                try:
                    data["manifest_signature"] = services.manifest_signature_parse(
                        data.get("manifest_signature", "")
                    )
                except ApplicationError as exc:
                    self.add_error("manifest_signature", exc.detail)
        upload = data.get("artifact_file")
        # Upload last, and only when everything else is valid, so a form sent back with errors
        # does not leave a stored file behind.
        if upload and not self.errors:
            try:
                self.stored_artifact = services.artifact_store(
                    content=upload,
                    filename=upload.name,
                    content_type=getattr(upload, "content_type", "") or "",
                )
            except ApplicationError as exc:
                self.add_error("artifact_file", exc.detail)
        return data


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

    def get_fieldsets(self, request: HttpRequest, obj: Sku | None = None) -> list[Any]:
        files = ["artifact_file", "artifact_details", "manifest_to_sign", "manifest_text",
                 "manifest_signature", "manifest_status", "manifest_detail", "manifest_key_id",
                 "manifest_checked_at"]  # fmt: skip
        if obj is None:
            files = ["artifact_file", "manifest_text", "manifest_signature"]
        elif obj.status in (SkuStatus.ACTIVE, SkuStatus.RETIRED):
            files = [name for name in files if name not in ("artifact_file", "manifest_text")]
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
        if obj is None:
            return fields
        if obj.status == SkuStatus.RETIRED:
            return [*fields, *SkuAdminForm.Meta.fields]
        if obj.status == SkuStatus.ACTIVE:
            fields += ["partner", "version", "manifest_signature"]
        if obj.activated_at is not None:
            fields.append("slug")
        return fields

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
        actor = Actor.of_user(request.user)
        services.sku_save(sku=obj, actor=actor)
        if form.stored_artifact is not None:
            services.sku_artifact_attach(
                sku_id=obj.pk, stored=form.stored_artifact, actor=actor, uploaded_by=request.user
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
        if not formset.has_changed():
            return
        formset.deleted_objects = [split_form.instance for split_form in formset.initial_forms]
        formset.new_objects = services.sku_splits_set(
            sku_id=form.instance.pk, splits=formset.shares(), actor=Actor.of_user(request.user)
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # retire instead: orders and licenses refer to SKUs

    def has_publish_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("catalog.publish_sku")

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
        for sku in queryset.order_by("pk"):
            check = services.sku_manifest_verify(sku_id=sku.pk, actor=actor)
            if check is None:
                self.message_user(request, f"{sku.slug}: no manifest to verify.", messages.WARNING)
            else:
                level = messages.SUCCESS if check.status == "verified" else messages.ERROR
                self.message_user(request, f"{sku.slug}: {check.status} — {check.detail}", level)
