"""The review queue in the admin: Moderators decide there with a reason; others only read."""

import pytest
from django.urls import reverse

from catalog.models import ModerationReview, ModerationState
from tests.catalog.factories import publish_sku
from tests.catalog.test_moderation import moderator_user

pytestmark = pytest.mark.django_db

QUEUE = reverse("admin:catalog_moderationreview_changelist")


@pytest.fixture
def flagged(publisher) -> ModerationReview:
    sku = publish_sku(publisher, activate=False, slug="flagged", description="Call 555 123 4567")
    return ModerationReview.objects.get(sku=sku, subject="listing")


def test_the_queue_shows_what_waits(client, flagged):
    client.force_login(moderator_user())
    page = client.get(QUEUE)
    assert page.status_code == 200
    assert list(page.context["cl"].result_list) == [flagged]
    assert "personal-data-phone" in page.content.decode()


def test_a_moderator_approves_from_the_queue_with_a_reason(client, flagged):
    moderator = moderator_user()
    client.force_login(moderator)
    asked = client.post(QUEUE, {"action": "approve", "_selected_action": [flagged.pk]})
    assert asked.status_code == 200  # the page asking for the reason

    client.post(
        QUEUE,
        {
            "action": "approve",
            "_selected_action": [flagged.pk],
            "reason": "the partner's support line",
            "apply": "1",
        },
    )

    flagged.refresh_from_db()
    assert (flagged.state, flagged.decided_by) == (ModerationState.APPROVED, moderator)


def test_content_ops_read_the_queue_but_cannot_decide(client, content_ops, flagged):
    client.force_login(content_ops)
    assert client.get(QUEUE).status_code == 200
    client.post(
        QUEUE,
        {"action": "approve", "_selected_action": [flagged.pk], "reason": "ok", "apply": "1"},
    )
    flagged.refresh_from_db()
    assert flagged.state == ModerationState.FLAGGED
