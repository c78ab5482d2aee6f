"""The category tree."""

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from catalog import services
from catalog.models import (
    Category,
)
from marketplace.actors import Actor

# --- Categories --------------------------------------------------------------------------------


class CategoryForm(forms.ModelForm):
    class Meta:
        model = Category
        fields = ["name", "slug", "parent", "description"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        problem = services.category_parent_problem(
            category=self.instance, parent=data.get("parent")
        )
        if problem:
            self.add_error("parent", problem)
        return data


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["__str__", "slug", "name", "parent", "sku_count"]
    search_fields = ["slug", "name", "path"]
    list_select_related = ["parent"]
    ordering = ["path"]  # Meta.ordering does not reach the annotated (GROUP BY) queryset
    prepopulated_fields = {"slug": ["name"]}
    form = CategoryForm
    fields = ["name", "slug", "parent", "description", "path"]
    readonly_fields = ["path"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Category]:
        return super().get_queryset(request).annotate(sku_count=Count("skus"))

    @admin.display(description="SKUs", ordering="sku_count")
    def sku_count(self, category: Category) -> int:
        return category.sku_count

    def save_model(self, request: HttpRequest, obj: Category, form: Any, change: bool) -> None:
        services.category_save(category=obj, actor=Actor.of_user(request.user))

    def delete_model(self, request: HttpRequest, obj: Category) -> None:
        services.category_delete(category=obj, actor=Actor.of_user(request.user))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Category]) -> None:
        # Deepest first, so a subtree selected whole can go.
        actor = Actor.of_user(request.user)
        for category in queryset.order_by("-path"):
            services.category_delete(category=category, actor=actor)
