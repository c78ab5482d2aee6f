"""The http moderation backend against the policy-service stand-in (tests.support.moderation_api):
the real client, a real socket."""

import pytest

from catalog import services
from catalog.exceptions import TransitionRefused
from catalog.models import ModerationReview, ModerationState, SkuStatus
from catalog.moderation.backends import ModerationUnavailable
from tests.catalog.factories import TEST_ACTOR, publish_sku
from tests.support.moderation_api import moderation_api  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db


def states(sku) -> dict[str, str]:
    return {review.subject: review.state for review in ModerationReview.objects.filter(sku=sku)}


def test_the_policy_service_passes_a_clean_sku(publisher, moderation_api):  # noqa: F811
    sku = publish_sku(publisher)

    assert sku.status == SkuStatus.ACTIVE
    assert set(states(sku).values()) == {ModerationState.PASSED}
    assert {review.backend for review in ModerationReview.objects.filter(sku=sku)} == {"http"}
    paths = sorted(request.path for request in moderation_api.requests)
    assert paths == ["/v1/artifacts", "/v1/reviews", "/v1/reviews"]
    upload = next(r for r in moderation_api.requests if r.path == "/v1/artifacts")
    assert upload.query["sha256"] == [sku.artifact.sha256]
    assert len(upload.body) == sku.artifact.size
    assert upload.headers["authorization"] == f"Bearer {moderation_api.token}"


def test_the_policy_service_flags_and_blocks_with_its_reasons(publisher, moderation_api):  # noqa: F811
    sku = publish_sku(
        publisher,
        activate=False,
        content=b"\x00 MALWARE sample",
        description="please review me",
    )

    assert states(sku) == {
        "artifact": ModerationState.BLOCKED,
        "listing": ModerationState.FLAGGED,
        "manifest": ModerationState.PASSED,
    }
    with pytest.raises(TransitionRefused) as refused:
        services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)
    joined = "; ".join(refused.value.reasons)
    assert "moderation blocked the artifact: [policy-malware] a known malware sample" in joined
    assert "the listing waits for a moderator's review: [policy-needs-review]" in joined


@pytest.mark.parametrize(
    "answer",
    [(503, b'{"error": "down"}'), (200, b"<html>proxy</html>"), (200, b'{"outcome": "maybe"}')],
)
def test_no_verdict_records_nothing_and_activation_says_why(
    publisher,
    moderation_api,  # noqa: F811
    answer,
):
    sku = publish_sku(publisher, activate=False, slug="waits")
    ModerationReview.objects.filter(sku=sku).delete()
    moderation_api.reply_next(*answer)

    with pytest.raises(ModerationUnavailable):
        services.sku_moderate(sku_id=sku.pk, actor=TEST_ACTOR)
    assert not ModerationReview.objects.filter(sku=sku).exists()

    moderation_api.fail_next(1, 503)
    with pytest.raises(TransitionRefused) as refused:
        services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)
    joined = "; ".join(refused.value.reasons)
    assert "moderation gave no verdict: the moderation service answered 503" in joined
    assert "the listing has not been through moderation yet" in joined

    # Back up: the next activation gets its verdicts and goes on sale.
    services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)


def test_a_closed_port_is_no_verdict(publisher, settings):
    sku = publish_sku(publisher, activate=False)
    ModerationReview.objects.filter(sku=sku).delete()
    settings.MODERATION_BACKEND = "http"
    settings.MODERATION_URL = "http://127.0.0.1:9"  # discard: nothing listens
    settings.MODERATION_TIMEOUT_SECONDS = 1.0

    with pytest.raises(ModerationUnavailable, match="unreachable"):
        services.sku_moderate(sku_id=sku.pk, actor=TEST_ACTOR)
    assert not ModerationReview.objects.filter(sku=sku).exists()
