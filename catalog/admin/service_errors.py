"""A service's refusal, shown in the admin form that asked for it: each problem at its field, in
the service's words, so the form restates none of the rules."""

from collections.abc import Collection, Mapping
from typing import Any

from django import forms
from django.db import models

from marketplace.exceptions import ApplicationError


def add_service_error(
    form: forms.BaseForm,
    exc: ApplicationError,
    *,
    fields: Mapping[str, str] | None = None,
    field: str | None = None,
) -> None:
    """Adds each of `exc.errors` to the form at its field (named as `fields` renames the
    service's names), and what the form has no field for above the form. An error that names
    no field goes to `field`, or above the form."""
    renames = fields or {}
    if not exc.errors:
        form.add_error(field if field in form.fields else None, exc.detail)
        return
    for name, messages in exc.errors.items():
        target = renames.get(name, name)
        for message in messages:
            form.add_error(target if target in form.fields else None, message)


class UniqueConstraintMessages:
    """A model formset that says a duplicate between its rows in the words of the model's
    unique constraint (`violation_error_message`), not Django's generic "Please correct the
    duplicate data"."""

    model: type[models.Model]

    def get_unique_error_message(self, unique_check: Collection[str]) -> Any:
        for constraint in self.model._meta.constraints:
            if (
                isinstance(constraint, models.UniqueConstraint)
                and set(constraint.fields) == set(unique_check)
                and constraint.violation_error_code
            ):
                return constraint.get_violation_error_message()
        return super().get_unique_error_message(unique_check)  # type: ignore[misc]
