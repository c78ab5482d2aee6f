"""What the event changelist reads and filters with; every query is one an index answers."""

import uuid
from datetime import date, datetime, timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import build_q_object_from_lookup_parameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Max, Q, QuerySet
from django.db.models.functions import Lower
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.http import urlencode

from audit.models import AuditEvent
from marketplace.actors import ActorType
from marketplace.models import User

USER_ACTORS = (ActorType.STAFF, ActorType.BUYER)


# --- Reads ---------------------------------------------------------------------------------------


def distinct_values(column: str) -> list[str]:
    """The distinct values of an indexed leading column, ascending.

    A loose index scan: one index probe per distinct value instead of reading every row, which
    is what SELECT DISTINCT does (PostgreSQL before 18 has no skip scan). Only for `action` and
    `subject_type`, the leading columns of audit_event's indexes.
    """
    if column not in ("action", "subject_type"):
        raise ValueError(f"{column} is not the leading column of an index")
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    name = connection.ops.quote_name(column)
    # S608: the table and column names are this module's own constants, not input.
    sql = (
        f"WITH RECURSIVE seen(value) AS ("  # noqa: S608
        f" SELECT MIN({name}) FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT MIN({name}) FROM {table} WHERE {name} > seen.value)"
        f" FROM seen WHERE seen.value IS NOT NULL"
        f") SELECT value FROM seen WHERE value IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [row[0] for row in cursor.fetchall()]


def emails_by_uuid(actor_ids: set[str]) -> dict[str, str]:
    """Users' emails by the uuid strings audit events name them with, in one query."""
    uuids = []
    for actor_id in actor_ids:
        try:
            uuids.append(uuid.UUID(actor_id))
        except ValueError:
            continue
    if not uuids:
        return {}
    rows = User.objects.filter(uuid__in=uuids).values_list("uuid", "email")
    return {str(user_uuid): email for user_uuid, email in rows}


def subject_q(subject_id: str, subject_type: str | None = None) -> Q:
    # The index is (subject_type, subject_id): naming the types lets it be used for an id alone.
    types = [subject_type] if subject_type else distinct_values("subject_type")
    return Q(subject_type__in=types, subject_id=subject_id)


def actor_q(actor_id: str, actor_type: str | None = None) -> Q:
    # The index is (actor_type, actor_id); the types are a closed set.
    types = [actor_type] if actor_type else list(ActorType.values)
    return Q(actor_type__in=types, actor_id=actor_id)


def search_q(term: str) -> Q:
    """Whole values only: a subject id, an actor id, a user's email, or #sequence."""
    match = subject_q(term) | actor_q(term)
    number = term.removeprefix("#")
    if number.isdigit():
        match |= Q(sequence=int(number))
    if "@" in term:
        uuids = (
            User.objects.alias(email_lower=Lower("email"))  # the case-insensitive unique index
            .filter(email_lower=term.lower())
            .values_list("uuid", flat=True)
        )
        match |= Q(actor_type__in=USER_ACTORS, actor_id__in=[str(u) for u in uuids])
    return match


def events_url(**params: str) -> str:
    return f"{reverse('admin:audit_auditevent_changelist')}?{urlencode(params)}"


# --- Changelist pieces -------------------------------------------------------------------------


class ChainPaginator(Paginator):
    """Counts the whole table without COUNT(*): the sequence is gapless from 1, so the chain
    head's sequence is the number of sealed events, and the unsealed ones are few and counted
    through their own index. A filtered list is counted as usual, through the index its filter
    uses."""

    @cached_property
    def count(self) -> int:
        query = self.object_list.query
        if not query.where and not query.distinct:
            sealed = AuditEvent.objects.aggregate(last=Max("sequence"))["last"] or 0
            return sealed + AuditEvent.objects.unsealed().count()
        return super().count


class AuditEventChangeList(ChangeList):
    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        # Evaluates the page once; the template then iterates the same, cached, queryset.
        events = list(self.result_list)
        emails = emails_by_uuid({e.actor_id for e in events if e.actor_type in USER_ACTORS})
        for event in events:
            event.actor_email = emails.get(event.actor_id, "")


class DistinctValueFilter(admin.SimpleListFilter):
    """Offers the values the table holds, read with a loose index scan."""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, value) for value in distinct_values(self.parameter_name or "")]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() is None:
            return queryset
        return queryset.filter(**{self.parameter_name: self.value()})


class ActionFilter(DistinctValueFilter):
    title = "action"
    parameter_name = "action"


class SubjectTypeFilter(DistinctValueFilter):
    title = "subject type"
    parameter_name = "subject_type"


class ExactValueFilter(admin.SimpleListFilter):
    """A filter on one id, set by the links of an event's page or a search: it shows only while
    it is in use, so the list says what it is filtered by and how to clear it."""

    type_parameter = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, self.label(value))] if value else []

    def label(self, value: str) -> str:
        return value

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if not self.value():
            return queryset
        return queryset.filter(self.q(self.value(), request.GET.get(self.type_parameter)))

    def q(self, value: str, type_value: str | None) -> Q:
        raise NotImplementedError


class ActorFilter(ExactValueFilter):
    title = "actor"
    parameter_name = "actor_id"
    type_parameter = "actor_type__exact"

    def label(self, value: str) -> str:
        return emails_by_uuid({value}).get(value, value)

    def q(self, value: str, type_value: str | None) -> Q:
        return actor_q(value, type_value)


class SubjectFilter(ExactValueFilter):
    title = "subject id"
    parameter_name = "subject_id"
    type_parameter = "subject_type"

    def q(self, value: str, type_value: str | None) -> Q:
        return subject_q(value, type_value)


class DateRangeFilter(admin.DateFieldListFilter):
    """The usual Today / Past 7 days / This month links, and a from-to range of whole days
    (both included, in the admin's time zone)."""

    template = "admin/audit/date_range_filter.html"

    def __init__(self, field: Any, request: HttpRequest, params: Any, *args: Any, **kwargs: Any):
        field_path = kwargs.get("field_path") or field.name
        self.from_param = f"{field_path}__from"
        self.to_param = f"{field_path}__to"
        super().__init__(field, request, params, *args, **kwargs)
        self.from_value = self.used_parameters.get(self.from_param, [""])[-1]
        self.to_value = self.used_parameters.get(self.to_param, [""])[-1]
        # The range form sends the list's other parameters along, so it narrows the list
        # rather than replacing its filters; a new range starts again from the first page.
        self.other_params = [
            (key, value)
            for key, values in request.GET.lists()
            if not key.startswith(self.field_generic) and key != "p"
            for value in values
        ]

    def expected_parameters(self) -> list[str]:
        return [*super().expected_parameters(), self.from_param, self.to_param]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        start = self._day(self.used_parameters.get(self.from_param))
        end = self._day(self.used_parameters.get(self.to_param))
        if start is not None:
            queryset = queryset.filter(**{f"{self.field_path}__gte": start})
        if end is not None:
            queryset = queryset.filter(**{f"{self.field_path}__lt": end + timedelta(days=1)})
        quick = {
            key: value
            for key, value in self.used_parameters.items()
            if key not in (self.from_param, self.to_param)
        }
        try:
            return queryset.filter(build_q_object_from_lookup_parameters(quick))
        except (ValueError, ValidationError) as exc:
            raise IncorrectLookupParameters(exc) from exc

    @staticmethod
    def _day(value: list[str] | None) -> datetime | None:
        if not value or not value[-1]:
            return None
        try:
            day = date.fromisoformat(value[-1])
        except ValueError as exc:
            raise IncorrectLookupParameters(exc) from exc
        return datetime(day.year, day.month, day.day, tzinfo=timezone.get_current_timezone())
