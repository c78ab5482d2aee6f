"""Preview material: the versions a SKU's preview serves, uploaded here, read-only once stored;
withdrawing a version, and each SKU's preview page with its on/off switch."""

import shlex
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import ForeignKey, QuerySet
from django.forms import ModelChoiceField
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.views.decorators.http import require_http_methods

from catalog.admin.service_errors import add_service_error
from catalog.models import Sku, SkuStatus
from marketplace.actors import Actor
from marketplace.admin.helpers import reason_action
from marketplace.exceptions import ApplicationError
from marketplace.roles import may_take_preview_action
from previews.admin.common import of_their_skus, short_digest, size_text, their_skus
from previews.models import PreviewFile, PreviewMaterial, PreviewSession
from previews.selectors import material_current
from previews.services import (
    Upload,
    preview_blockers,
    preview_material_add,
    preview_material_withdraw,
    sku_preview_set,
)

COMMAND_LINE_MAX = 4000


class MultipleFileInput(forms.FileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Any number of files (none included: the service says what is missing)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(**kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        items = data if isinstance(data, list | tuple) else [data]
        return [super(MultipleFileField, self).clean(item, initial) for item in items if item]


class MaterialAddForm(forms.ModelForm):
    files = MultipleFileField(
        required=False,
        label="Files",
        help_text="One or more files; a .zip is expanded into its files, paths kept.",
    )
    command = forms.CharField(
        required=False,
        max_length=COMMAND_LINE_MAX,
        widget=forms.TextInput(attrs={"size": 80}),
        help_text=(
            "Sandboxes only: the command that serves the files over HTTP on the listening socket "
            "it inherits (file descriptor PREVIEW_LISTEN_FD), run in /preview, split like a "
            "shell line (e.g. /usr/bin/python3 -I server.py)."
        ),
    )

    class Meta:
        model = PreviewMaterial
        fields = ["sku", "kind", "entry", "note"]
        labels = {"sku": "SKU"}
        help_texts = {
            "entry": "The file a sample opens with (index.html is taken when there is one); "
            "empty lists the files.",
        }

    # Set when the form comes back because the service refused the upload
    # (PreviewMaterialAdmin.changeform_view).
    refusal: ApplicationError | None = None

    def clean_command(self) -> list[str]:
        line = self.cleaned_data.get("command", "")
        if "\n" in line or "\r" in line:
            raise forms.ValidationError("The command is one line.")
        try:
            return shlex.split(line)
        except ValueError as exc:  # an unclosed quote, a trailing backslash
            raise forms.ValidationError(
                f"The command cannot be split into arguments: {exc}."
            ) from None

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.refusal is not None:
            add_service_error(self, self.refusal, field="sku")


class _Refused(Exception):
    """The service refused the upload after the form had validated: the admin shows the form
    again with the refusal at its fields (the files are chosen again)."""

    def __init__(self, error: ApplicationError) -> None:
        super().__init__(error.detail)
        self.error = error


class PreviewFileInline(admin.TabularInline):
    model = PreviewFile
    fields = ["path", "content_type", "size_display", "sha256"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "files"

    @admin.display(description="Size")
    def size_display(self, item: PreviewFile) -> str:
        return size_text(item.size)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def sku_preview_url(sku_id: int) -> str:
    return reverse("admin:previews_sku_preview", args=[sku_id])


@admin.register(PreviewMaterial)
class PreviewMaterialAdmin(admin.ModelAdmin):
    form = MaterialAddForm
    list_display = [
        "sku_slug",
        "version",
        "kind",
        "file_count",
        "size_display",
        "digest_short",
        "created_at",
        "withdrawn_at",
        "sku_preview",
    ]
    list_filter = ["kind", ("withdrawn_at", admin.EmptyFieldListFilter)]
    list_select_related = ["sku"]
    search_fields = ["sku__slug", "=digest"]
    show_facets = admin.ShowFacets.NEVER
    actions = ["withdraw", "preview_on", "preview_off"]
    view_fields = [
        "sku_link",
        "version",
        "kind",
        "uuid",
        "digest",
        "size_display",
        "file_count",
        "command_display",
        "entry",
        "note",
        "created_at",
        "created_by",
        "withdrawn_at",
    ]

    # --- Partner staff: their partner's SKUs only ---

    def get_queryset(self, request: HttpRequest) -> QuerySet[PreviewMaterial]:
        return of_their_skus(super().get_queryset(request), request)

    def formfield_for_foreignkey(
        self, db_field: ForeignKey, request: HttpRequest, **kwargs: Any
    ) -> ModelChoiceField | None:
        if db_field.name == "sku":
            # Offered, and accepted on submit, only what they may upload to.
            kwargs["queryset"] = (
                their_skus(request).exclude(status=SkuStatus.RETIRED).order_by("slug")
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    # --- Who may do what: rows are immutable; material is added and withdrawn by the services ---

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_manage_permission(self, request: HttpRequest) -> bool:
        return may_take_preview_action(request.user, "manage_material")

    # --- Pages ---

    def get_fields(self, request: HttpRequest, obj: PreviewMaterial | None = None) -> list[str]:
        if obj is None:
            return ["sku", "kind", "files", "command", "entry", "note"]
        return list(self.view_fields)

    def get_readonly_fields(
        self, request: HttpRequest, obj: PreviewMaterial | None = None
    ) -> list[str]:
        return [] if obj is None else list(self.view_fields)

    def get_inlines(self, request: HttpRequest, obj: PreviewMaterial | None) -> list[Any]:
        return [] if obj is None else [PreviewFileInline]

    def get_form(
        self,
        request: HttpRequest,
        obj: PreviewMaterial | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> Any:
        if obj is not None:
            # The view page: every field is shown read-only, none is offered.
            kwargs["form"] = forms.ModelForm
            return super().get_form(request, obj, change=change, **kwargs)
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"refusal": getattr(request, "material_refusal", None)})

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except _Refused as refused:
            # The admin's transaction rolled back and the service discarded what it stored:
            # the same form comes back with the refusal at its fields.
            request.material_refusal = refused.error  # type: ignore[attr-defined]
            return super().changeform_view(request, object_id, form_url, extra_context)

    def save_form(self, request: HttpRequest, form: Any, change: bool) -> PreviewMaterial:
        return form.instance  # the service makes the row (save_model)

    def save_model(
        self, request: HttpRequest, obj: PreviewMaterial, form: Any, change: bool
    ) -> None:
        if change:
            raise PermissionDenied  # rows are immutable: a change is a new version
        data = form.cleaned_data
        try:
            material = preview_material_add(
                sku_id=data["sku"].pk,
                kind=data["kind"],
                uploads=[Upload(name=item.name, content=item) for item in data["files"]],
                command=data["command"],
                entry=data.get("entry", ""),
                note=data.get("note", ""),
                actor=Actor.of_user(request.user),
                created_by=request.user,
            )
        except ApplicationError as exc:
            raise _Refused(exc) from exc
        # The admin goes on with `obj` (its log entry, the redirect): make it the stored row.
        for field in PreviewMaterial._meta.concrete_fields:
            setattr(obj, field.attname, getattr(material, field.attname))
        obj._state.adding, obj._state.db = False, material._state.db
        sku = data["sku"]
        sku.refresh_from_db(fields=["preview_enabled"])
        if not sku.preview_enabled:
            self.message_user(
                request,
                format_html(
                    'The preview of {} is off: switch it on from <a href="{}">its preview '
                    "page</a>.",
                    sku.slug,
                    sku_preview_url(sku.pk),
                ),
                messages.INFO,
            )

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        pass  # the files are the service's (preview_material_add)

    # --- Columns and fields ---

    @admin.display(description="SKU", ordering="sku__slug")
    def sku_slug(self, material: PreviewMaterial) -> str:
        return material.sku.slug

    @admin.display(description="SKU")
    def sku_link(self, material: PreviewMaterial) -> SafeString:
        return format_html(
            '<a href="{}">{}</a> (its preview page)', sku_preview_url(material.sku_id), material.sku
        )

    @admin.display(description="Size", ordering="size")
    def size_display(self, material: PreviewMaterial) -> str:
        return size_text(material.size)

    @admin.display(description="Digest")
    def digest_short(self, material: PreviewMaterial) -> str:
        return short_digest(material.digest)

    @admin.display(description="Command")
    def command_display(self, material: PreviewMaterial) -> str:
        return shlex.join(material.command) if material.command else "—"

    @admin.display(description="SKU preview")
    def sku_preview(self, material: PreviewMaterial) -> SafeString:
        state = "on" if material.sku.preview_enabled else "off"
        return format_html('<a href="{}">{}</a>', sku_preview_url(material.sku_id), state)

    # --- Actions ---

    @admin.action(description="Withdraw selected material versions…", permissions=["manage"])
    def withdraw(
        self, request: HttpRequest, queryset: QuerySet[PreviewMaterial]
    ) -> HttpResponse | None:
        # Withdrawing again changes nothing: the page lists only what is still current.
        return reason_action(
            self,
            request,
            queryset.filter(withdrawn_at__isnull=True).select_related("sku"),
            title="Withdraw preview material (its open sessions end; a SKU left without "
            "material has its preview switched off)",
            apply=lambda material, reason: preview_material_withdraw(
                material_id=material.pk, reason=reason, actor=Actor.of_user(request.user)
            ),
            done="{count} material version(s) withdrawn.",
        )

    def _switch(
        self, request: HttpRequest, queryset: QuerySet[PreviewMaterial], *, enabled: bool
    ) -> None:
        actor = Actor.of_user(request.user)
        sku_ids = sorted(set(queryset.values_list("sku_id", flat=True)))
        for sku in Sku.objects.filter(pk__in=sku_ids).order_by("pk"):
            self._switch_one(request, sku, enabled=enabled, actor=actor)

    def _switch_one(self, request: HttpRequest, sku: Sku, *, enabled: bool, actor: Actor) -> None:
        try:
            sku_preview_set(sku_id=sku.pk, enabled=enabled, actor=actor)
        except ApplicationError as exc:
            self.message_user(request, f"{sku.slug}: {exc.detail}", messages.ERROR)
        else:
            state = "on" if enabled else "off"
            self.message_user(request, f"The preview of {sku.slug} is {state}.", messages.SUCCESS)

    @admin.action(description="Switch the preview of their SKUs on", permissions=["manage"])
    def preview_on(self, request: HttpRequest, queryset: QuerySet[PreviewMaterial]) -> None:
        self._switch(request, queryset, enabled=True)

    @admin.action(
        description="Switch the preview of their SKUs off (open sessions end)",
        permissions=["manage"],
    )
    def preview_off(self, request: HttpRequest, queryset: QuerySet[PreviewMaterial]) -> None:
        self._switch(request, queryset, enabled=False)

    # --- Each SKU's preview page ---

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("sku/<int:sku_id>/", wrap(self.sku_preview_view), name="previews_sku_preview"),
            *super().get_urls(),
        ]

    def _sku_or_404(self, request: HttpRequest, sku_id: int) -> Sku:
        sku = their_skus(request).filter(pk=sku_id).select_related("partner").first()
        if sku is None:
            raise Http404(f"There is no SKU {sku_id} you may see.")
        return sku

    @method_decorator(require_http_methods(["GET", "POST"]))
    def sku_preview_view(self, request: HttpRequest, sku_id: int) -> HttpResponse:
        """A SKU's preview: on or off and why it cannot be switched on, its material versions,
        its open sessions; Switch on/off (sku_preview_set) and a link to upload a version."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        sku = self._sku_or_404(request, sku_id)
        may_manage = self.has_manage_permission(request)
        if request.method == "POST":
            if not may_manage:
                raise PermissionDenied
            enabled = request.POST.get("enabled") == "1"
            self._switch_one(request, sku, enabled=enabled, actor=Actor.of_user(request.user))
            return HttpResponseRedirect(sku_preview_url(sku.pk))
        current = material_current(sku)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Preview of {sku}",
            "opts": self.model._meta,
            "sku": sku,
            "current": current,
            "blockers": [] if sku.preview_enabled else preview_blockers(sku),
            "versions": PreviewMaterial.objects.filter(sku=sku).order_by("-version"),
            "open_sessions": PreviewSession.objects.open().filter(sku=sku).count(),
            "may_manage": may_manage,
            "may_add": self.has_add_permission(request) and sku.status != SkuStatus.RETIRED,
            "add_url": reverse("admin:previews_previewmaterial_add") + f"?sku={sku.pk}",
        }
        return TemplateResponse(request, "previews/admin/sku_preview.html", context)
