"""The category tree."""

from django.db import transaction
from django.db.models import ProtectedError

from audit.services import audit_append
from catalog.cache import catalog_changed
from catalog.exceptions import (
    InvalidCategory,
)
from catalog.models import (
    Category,
)
from catalog.services.changes import category_fields, changes, recorded
from marketplace.actors import Actor
from marketplace.validation import full_clean

CATEGORY_MAX_DEPTH = 8


# --- Categories --------------------------------------------------------------------------------


def category_parent_problem(*, category: Category, parent: Category | None) -> str | None:
    """Why `parent` cannot hold `category`, or None: no cycles, at most 8 levels."""
    depth = 1
    ancestor = parent
    while ancestor is not None:
        if category.pk is not None and ancestor.pk == category.pk:
            return "A category cannot be placed under itself or one of its own subcategories."
        depth += 1
        if depth > CATEGORY_MAX_DEPTH:
            return f"Categories nest at most {CATEGORY_MAX_DEPTH} levels deep."
        ancestor = ancestor.parent
    return None


@transaction.atomic
def category_save(*, category: Category, actor: Actor) -> Category:
    """Saves a category and keeps the materialised paths of it and its subtree right.

    Records `category.created`, `category.moved` (its parent changed) or `category.updated`;
    nothing when no field changed.
    """
    problem = category_parent_problem(category=category, parent=category.parent)
    if problem:
        raise InvalidCategory(problem, errors={"parent": [problem]})

    stored = (
        Category.objects.select_for_update(of=("self",))
        .select_related("parent")
        .filter(pk=category.pk)
        .first()
        if category.pk
        else None
    )
    before = category_fields(stored) if stored else None
    old_path = stored.path if stored else None
    category.path = (category.parent.path if category.parent else "") + category.slug + "/"
    full_clean(category)
    category.save()

    if old_path and old_path != category.path:
        subtree = list(
            Category.objects.filter(path__startswith=old_path)
            .exclude(pk=category.pk)
            .order_by("path")
        )
        for node in subtree:
            node.path = category.path + node.path[len(old_path) :]
        Category.objects.bulk_update(subtree, ["path"])
    after = category_fields(category)
    if before is None:
        audit_append(actor=actor, action="category.created", subject=category, data=recorded(after))
    elif change := changes(before, after):
        action = "category.moved" if "parent" in change["changed"] else "category.updated"
        audit_append(actor=actor, action=action, subject=category, data=change)
    catalog_changed()
    return category


@transaction.atomic
def category_delete(*, category: Category, actor: Actor) -> None:
    """Deletes an empty category; records `category.deleted`."""
    category_id, path = category.pk, category.path
    try:
        category.delete()
    except ProtectedError:
        raise InvalidCategory(
            f"{category} still has subcategories or SKUs; move them first."
        ) from None
    audit_append(
        actor=actor,
        action="category.deleted",
        subject=("category", category_id),
        data={"slug": category.slug, "path": path},
    )
    catalog_changed()
