"""Model validation that does not ask the database what Python can answer.

Django 5.2 validates a CheckConstraint in `full_clean` with a query (`SELECT 1 AS "_check"
WHERE <condition over the row's values>`), inside a savepoint when a transaction is open:
three round trips per constraint, for conditions like `price_amount > 0` whose answer the
row's own values already hold. Excluding those constraints from validation and letting the
database refuse the write would turn a bad value into an IntegrityError (a 500, or a form
error on no field) instead of an error at the field, which the admin and the API show; so they
are decided here, in Python, with the same outcome as Django's query: the same error (message
and code) when the condition is false, nothing when it is true or unknown (SQL's NULL: a CHECK
holds unless its condition is false), nothing when it refers to a field left out of validation.

Python decides a condition made of `&`, `|` and `~` over lookups `exact`, `in`, `gt`, `gte`,
`lt`, `lte`, `isnull` and a plain `regex`, on the row's own fields, against constants or `F()`
of its own fields, where the values compare in Python as they do in SQL (numbers with numbers,
strings by equality, dates with dates). Anything else (a transform, a join, a function, a
string ordering, which depends on the database's collation) is left to Django's query, so no
constraint goes unchecked.

`full_clean(instance)` is `instance.full_clean()` done that way; `ConstraintErrorsAtFields`
also shows each constraint's error at the field it is about.
"""

import datetime
import decimal
import re
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, FieldDoesNotExist, ValidationError
from django.db import models, router
from django.db.models import F, Q
from django.db.models.constants import LOOKUP_SEP

__all__ = [
    "ConstraintErrorsAtFields",
    "check_holds",
    "constraint_field",
    "constraints_validate",
    "full_clean",
]


class _Undecided(Exception):
    """Python cannot decide this condition as the database would: ask the database."""


class _Excluded(Exception):
    """The condition refers to a field left out of validation: Django skips the constraint."""


# Values that compare in Python as in SQL, by family. Strings compare by equality only: their
# ordering is the database's collation.
_NUMBERS = (int, float, decimal.Decimal)
_FAMILIES: tuple[tuple[type, ...], ...] = (
    _NUMBERS,
    (str,),
    (datetime.datetime,),
    (datetime.date,),
    (datetime.time,),
    (datetime.timedelta,),
)
# A regex whose meaning is the same to Python's `re`, PostgreSQL's `~` and SQLite's REGEXP
# (which Django implements with `re`): literal letters and digits, bracketed classes of them and
# their ranges, the quantifiers ?, *, + and {m,n}, anchored or not.
_PLAIN_REGEX = re.compile(
    r"\^?(?:(?:[A-Za-z0-9]|\[[A-Za-z0-9-]+\])(?:[?*+]|\{[0-9]+(?:,[0-9]*)?\})?)*\$?"
)


def _family(value: Any) -> tuple[type, ...]:
    if isinstance(value, bool):
        return (bool,)
    # A datetime is a date too: its own family comes first, so the two stay apart, as in SQL.
    for family in _FAMILIES:
        if isinstance(value, family):
            return family
    return (type(value),)


def _comparable(left: Any, right: Any, *, ordering: bool) -> None:
    family = _family(left)
    if family != _family(right):
        raise _Undecided
    if ordering and family in ((str,), (bool,)):
        raise _Undecided
    if family == (datetime.datetime,) and (left.tzinfo is None) != (right.tzinfo is None):
        raise _Undecided


class _Row:
    """The row's values as Django's check query sees them (Model._get_field_expression_map):
    each local concrete field by name (a foreign key by its id), and `pk`."""

    def __init__(self, instance: models.Model, exclude: set[str]) -> None:
        self.instance = instance
        self.opts = instance._meta
        self.exclude = exclude

    def value(self, name: str) -> Any:
        if name == "pk":
            if "pk" in self.exclude:
                raise _Excluded
            value = self.instance.pk
        else:
            try:
                field = self.opts.get_field(name)
            except FieldDoesNotExist:
                raise _Undecided from None
            if field not in self.opts.local_concrete_fields or field.generated:
                raise _Undecided
            if field.name != name:  # an attname such as `parent_id`: not in Django's map
                raise _Undecided
            if field.name in self.exclude:
                raise _Excluded
            value = getattr(self.instance, field.attname)
        if hasattr(value, "resolve_expression"):  # an expression assigned to the field
            raise _Undecided
        return value

    def operand(self, rhs: Any) -> Any:
        if isinstance(rhs, F):
            return self.value(rhs.name)
        if hasattr(rhs, "resolve_expression") or isinstance(rhs, models.Model):
            raise _Undecided
        return rhs


def _lookup(row: _Row, key: str, rhs: Any) -> bool | None:
    """A `field__lookup=rhs` child of a Q, in SQL's three values (None: unknown)."""
    name, _, lookup = key.partition(LOOKUP_SEP)
    lookup = lookup or "exact"
    if LOOKUP_SEP in lookup:
        raise _Undecided  # a transform or a join
    value = row.value(name)
    if lookup == "isnull":
        if not isinstance(rhs, bool):
            raise _Undecided
        return (value is None) == rhs
    if lookup == "in":
        if isinstance(rhs, str | bytes) or not isinstance(rhs, Iterable):
            raise _Undecided
        # Django drops None from the list before it reaches SQL.
        options = [row.operand(item) for item in rhs if item is not None]
        if value is None:
            return None
        for option in options:
            _comparable(value, option, ordering=False)
        return value in options
    if rhs is None:
        if lookup == "exact":
            return value is None  # Django reads `field=None` as `field__isnull=True`
        raise _Undecided  # Django refuses None for the other lookups
    rhs = row.operand(rhs)
    if value is None or rhs is None:  # a NULL compared (an F() may be NULL): unknown
        return None
    if lookup == "regex":
        if not (isinstance(value, str) and isinstance(rhs, str)):
            raise _Undecided
        # `$` before a final newline matches in `re`, not in PostgreSQL.
        if "\n" in value or not _PLAIN_REGEX.fullmatch(rhs):
            raise _Undecided
        return re.search(rhs, value) is not None
    compare = {
        "exact": lambda a, b: a == b,
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }.get(lookup)
    if compare is None:
        raise _Undecided
    _comparable(value, rhs, ordering=lookup != "exact")
    return compare(value, rhs)


def _condition(row: _Row, node: Any) -> bool | None:
    if isinstance(node, tuple) and len(node) == 2 and isinstance(node[0], str):
        return _lookup(row, node[0], node[1])
    if type(node) is not Q:  # an expression or a lookup object
        raise _Undecided
    results = [_condition(row, child) for child in node.children]
    if node.connector == Q.AND:
        result = False if False in results else None if None in results else True
    elif node.connector == Q.OR:
        result = True if True in results else None if None in results else False
    else:  # XOR: leave it to the database
        raise _Undecided
    if node.negated and result is not None:
        result = not result
    return result


def check_holds(
    constraint: models.CheckConstraint, instance: models.Model, exclude: set[str]
) -> bool | None:
    """Whether `instance` meets `constraint` as Django's validation would find (True also
    when the constraint is skipped because it refers to an excluded field), or None when
    Python cannot tell and the database must be asked."""
    try:
        return _condition(_Row(instance, exclude), Q(constraint.condition)) is not False
    except _Excluded:
        return True
    except _Undecided:
        return None


def constraints_validate(instance: models.Model, *, exclude: Iterable[str] | None = None) -> None:
    """What Model.validate_constraints does, the same errors included, but each check
    constraint Python can decide is decided without a query (see the module's docstring)."""
    exclude = set(exclude or ())
    using = router.db_for_write(instance.__class__, instance=instance)
    errors: dict[str, Any] = {}
    for model_class, model_constraints in instance.get_constraints():
        for constraint in model_constraints:
            try:
                if isinstance(constraint, models.CheckConstraint):
                    holds = check_holds(constraint, instance, exclude)
                    if holds is False:
                        raise ValidationError(
                            constraint.get_violation_error_message(),
                            code=constraint.violation_error_code,
                        )
                    if holds is True:
                        continue
                constraint.validate(model_class, instance, exclude=exclude, using=using)
            except ValidationError as exc:
                if getattr(exc, "code", None) == "unique" and len(constraint.fields) == 1:
                    errors.setdefault(constraint.fields[0], []).append(exc)
                else:
                    errors = exc.update_error_dict(errors)
    if errors:
        raise ValidationError(errors)


def constraint_field(constraint: models.BaseConstraint, opts: Any) -> str | None:
    """The field at which a form shows a constraint's violation: the one field a check refers
    to, or the last field of a unique constraint (the ones before it are its scope, e.g. the
    partner of a key id). None for a constraint about several fields."""
    if isinstance(constraint, models.UniqueConstraint):
        return constraint.fields[-1] if constraint.fields else None
    if isinstance(constraint, models.CheckConstraint):
        fields = Q(constraint.condition).referenced_base_fields - {"pk", opts.pk.name}
        return next(iter(fields)) if len(fields) == 1 else None
    return None


def _at_fields(model: Any, exc: ValidationError) -> ValidationError:
    """`exc` with each constraint's error moved from the form as a whole to the field the
    constraint covers. Only constraints with their own `violation_error_code` are moved, so an
    error is matched to its constraint by code, not by wording."""
    opts = model._meta
    fields = {
        constraint.violation_error_code: field
        for constraint in opts.constraints
        if constraint.violation_error_code and (field := constraint_field(constraint, opts))
    }
    errors: dict[str, list[ValidationError]] = {}
    for field, field_errors in exc.error_dict.items():
        for error in field_errors:
            if field == NON_FIELD_ERRORS:
                errors.setdefault(fields.get(error.code, field), []).append(error)
            else:
                errors.setdefault(field, []).append(error)
    return ValidationError(errors)


class ConstraintErrorsAtFields:
    """Model mixin: constraints validated without a query for what Python decides, and the
    error of each violated constraint put at the field it covers (Django puts a check
    constraint's error on the whole form), in the words of its `violation_error_message`."""

    _meta: Any

    def validate_constraints(self, exclude: Any = None) -> None:
        try:
            constraints_validate(self, exclude=exclude)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise _at_fields(type(self), exc) from None


def full_clean(instance: models.Model, *, exclude: Iterable[str] | None = None) -> None:
    """`instance.full_clean(exclude)` with its constraints validated as ConstraintErrorsAtFields
    does: no query for a check Python decides, each constraint's error at its field."""
    exclude = set(exclude or ())
    errors: dict[str, Any] = {}
    try:
        instance.full_clean(exclude=exclude, validate_constraints=False)
    except ValidationError as exc:
        errors = exc.update_error_dict(errors)
    # As Model.full_clean does: a field that failed is not checked against constraints.
    exclude |= {name for name in errors if name != NON_FIELD_ERRORS}
    try:
        constraints_validate(instance, exclude=exclude)
    except ValidationError as exc:
        errors = _at_fields(type(instance), exc).update_error_dict(errors)
    if errors:
        raise ValidationError(errors)
