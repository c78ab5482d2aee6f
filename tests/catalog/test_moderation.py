"""The moderation gate with the local backend: verdicts on upload, the activation blocker, the
moderators' decisions and their audit events."""

import io
import zipfile

import pytest
from django.contrib.auth.models import Group

from audit.models import AuditEvent
from catalog import services
from catalog.exceptions import (
    ModerationDecisionRefused,
    ModerationNotAllowed,
    TransitionRefused,
)
from catalog.models import ModerationReview, ModerationState, SkuStatus
from catalog.selectors import moderation_blockers, moderation_queue, sku_activation_blockers
from marketplace.actors import Actor
from marketplace.models import User
from marketplace.roles import MODERATOR, roles_sync
from tests.catalog.factories import TEST_ACTOR, CategoryFactory, publish_sku

pytestmark = pytest.mark.django_db


def moderator_user(email: str = "moderator@example.com") -> User:
    roles_sync()
    user = User.objects.create_user(email=email, password="x" * 20, is_staff=True)
    user.groups.add(Group.objects.get(name=MODERATOR))
    return user


@pytest.fixture
def moderator() -> User:
    return moderator_user()


def zip_with(**entries: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name.replace("__", "."), data)
    return buffer.getvalue()


def reviews_of(sku) -> dict[str, ModerationReview]:
    return {review.subject: review for review in ModerationReview.objects.filter(sku=sku)}


def test_a_clean_sku_passes_and_goes_on_sale(publisher):
    sku = publish_sku(publisher)

    assert sku.status == SkuStatus.ACTIVE
    reviews = reviews_of(sku)
    assert {subject: review.state for subject, review in reviews.items()} == {
        "artifact": ModerationState.PASSED,
        "manifest": ModerationState.PASSED,
        "listing": ModerationState.PASSED,
    }
    assert reviews["artifact"].fingerprint == sku.artifact.sha256
    assert reviews["artifact"].backend == "local"


def test_a_flagged_upload_stays_a_draft_and_says_which_rule_it_broke(publisher):
    assets = CategoryFactory(slug="assets")
    sku = publish_sku(
        publisher,
        activate=False,
        category=assets,
        content=zip_with(texture__png=b"\x89PNG\r\n\x1a\n", setup__exe=b"MZ" + bytes(64)),
        description="Questions? mail me at dev@example.org",
    )

    with pytest.raises(TransitionRefused) as refused:
        services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)

    sku.refresh_from_db()
    assert sku.status == SkuStatus.DRAFT
    reasons = refused.value.reasons
    assert any(
        "the artifact waits for a moderator's review: [executable-in-archive]" in reason
        for reason in reasons
    )
    assert any("[personal-data-email]" in reason for reason in reasons)
    assert [review.sku.slug for review in moderation_queue()] == [sku.slug, sku.slug]


def test_a_blocked_upload_is_refused_activation(publisher):
    bomb = zip_with(zeros__bin=bytes(2 * 1024**2))
    sku = publish_sku(publisher, activate=False, content=bomb)

    assert reviews_of(sku)["artifact"].state == ModerationState.BLOCKED
    assert reviews_of(sku)["artifact"].reason_codes() == ["archive-bomb"]
    blockers = sku_activation_blockers(sku)
    assert any(
        reason.startswith("moderation blocked the artifact: [archive-bomb]") for reason in blockers
    )
    with pytest.raises(TransitionRefused):
        services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)


def test_a_file_type_the_category_does_not_take_is_flagged_by_content_not_name(publisher):
    assets = CategoryFactory(slug="assets")
    # Named like an archive, but a PE executable.
    sku = publish_sku(publisher, activate=False, category=assets, content=b"MZ" + bytes(200))

    review = reviews_of(sku)["artifact"]
    assert review.state == ModerationState.FLAGGED
    assert review.reason_codes() == ["file-type-not-allowed"]
    assert "content is pe" in review.reasons[0]["message"]


def test_activation_asks_moderation_about_what_has_no_verdict(publisher):
    sku = publish_sku(publisher, activate=False)
    ModerationReview.objects.filter(sku=sku).delete()

    services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)

    assert len(reviews_of(sku)) == 3


def test_a_moderator_approves_a_flag_and_the_sku_can_go_on_sale(publisher, moderator):
    sku = publish_sku(publisher, activate=False, description="Call 555 123 4567")
    review = reviews_of(sku)["listing"]
    assert review.state == ModerationState.FLAGGED

    services.moderation_decide(
        review_id=review.pk, decision="approve", reason="the shop's support line", user=moderator
    )

    review.refresh_from_db()
    assert (review.state, review.decided_by, review.decision_reason) == (
        ModerationState.APPROVED,
        moderator,
        "the shop's support line",
    )
    event = AuditEvent.objects.get(action="sku.moderation_decided")
    assert event.actor_id == str(moderator.uuid)
    assert event.data == {
        "sku": sku.slug,
        "partner": publisher.partner.slug,
        "version": "1.0.0",
        "review_id": review.pk,
        "subject": "listing",
        "fingerprint": review.fingerprint,
        "decision": "approved",
        "previous": "flagged",
        "reason": "the shop's support line",
        "rules": ["personal-data-phone"],
    }
    services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)


def test_a_rejected_version_cannot_be_activated(publisher, moderator):
    sku = publish_sku(publisher, activate=False, description="Call 555 123 4567")
    review = reviews_of(sku)["listing"]

    services.moderation_decide(
        review_id=review.pk, decision="reject", reason="personal number", user=moderator
    )

    with pytest.raises(TransitionRefused) as refused:
        services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)
    assert "a moderator rejected the listing: personal number ([personal-data-phone]" in "; ".join(
        refused.value.reasons
    )
    sku.refresh_from_db()
    assert sku.status == SkuStatus.DRAFT


def test_rejecting_what_is_on_sale_takes_it_off_sale(publisher, moderator):
    sku = publish_sku(publisher)
    review = reviews_of(sku)["artifact"]

    services.moderation_decide(
        review_id=review.pk, decision="reject", reason="infringes a trademark", user=moderator
    )

    sku.refresh_from_db()
    assert sku.status == SkuStatus.SUSPENDED
    assert sku.status_reason == "artifact rejected by a moderator: infringes a trademark"


def test_a_moderator_overrides_a_block_with_a_reason(publisher, moderator):
    sku = publish_sku(publisher, activate=False, content=zip_with(zeros__bin=bytes(2 * 1024**2)))
    review = reviews_of(sku)["artifact"]

    services.moderation_decide(
        review_id=review.pk, decision="override", reason="a sparse disk image", user=moderator
    )

    services.sku_activate(sku_id=sku.pk, actor=TEST_ACTOR)


@pytest.mark.parametrize(
    ("who", "error"),
    [("content_ops", ModerationNotAllowed), ("uploader", ModerationNotAllowed)],
)
def test_only_a_moderator_other_than_the_uploader_decides_and_nothing_is_written(
    publisher, content_ops, who, error
):
    uploader = moderator_user("uploader@example.com")
    sku = publish_sku(publisher, activate=False, description="Call 555 123 4567")
    review = reviews_of(sku)["listing"]
    ModerationReview.objects.filter(pk=review.pk).update(submitted_by=uploader)
    events = AuditEvent.objects.count()

    user = content_ops if who == "content_ops" else uploader
    with pytest.raises(error):
        services.moderation_decide(
            review_id=review.pk, decision="approve", reason="fine", user=user
        )

    review.refresh_from_db()
    assert (review.state, review.decided_by) == (ModerationState.FLAGGED, None)
    assert AuditEvent.objects.count() == events


def test_the_artifacts_uploader_is_its_submitter(publisher):
    uploader = moderator_user("uploader@example.com")
    sku = publish_sku(publisher, activate=False)
    services.sku_artifact_upload(
        sku=sku,
        content=io.BytesIO(b"MZ" + bytes(100)),
        filename="x.zip",
        actor=Actor.of_user(uploader),
        uploaded_by=uploader,
    )
    services.sku_moderate(sku_id=sku.pk, actor=TEST_ACTOR)
    review = ModerationReview.objects.get(sku=sku, subject="artifact", state="flagged")
    assert review.submitted_by == uploader

    with pytest.raises(ModerationNotAllowed):
        services.moderation_decide(
            review_id=review.pk, decision="approve", reason="mine", user=uploader
        )


def test_a_decision_needs_a_reason_and_a_state_it_applies_to(publisher, moderator):
    sku = publish_sku(publisher, activate=False)
    passed = reviews_of(sku)["artifact"]

    with pytest.raises(ModerationDecisionRefused, match="cannot be approved"):
        services.moderation_decide(
            review_id=passed.pk, decision="approve", reason="ok", user=moderator
        )
    with pytest.raises(ModerationDecisionRefused, match="Give the reason"):
        services.moderation_decide(
            review_id=passed.pk, decision="reject", reason=" ", user=moderator
        )
    passed.refresh_from_db()
    assert passed.state == ModerationState.PASSED
    assert not AuditEvent.objects.filter(action="sku.moderation_decided").exists()


def test_a_new_version_of_the_listing_needs_its_own_verdict(publisher):
    sku = publish_sku(publisher, activate=False)
    sku.version = "1.1.0"
    sku.description = "Now with e-mail support: help@example.com"
    services.sku_save(sku=sku, actor=TEST_ACTOR)

    assert moderation_blockers(sku) == ["the listing has not been through moderation yet"]
    services.sku_moderate(sku_id=sku.pk, actor=TEST_ACTOR)
    listing = ModerationReview.objects.filter(sku=sku, subject="listing").order_by("-pk").first()
    assert (listing.sku_version, listing.state) == ("1.1.0", ModerationState.FLAGGED)


def test_moderating_twice_records_nothing_more(publisher):
    sku = publish_sku(publisher, activate=False)
    count = ModerationReview.objects.count()
    assert services.sku_moderate(sku_id=sku.pk, actor=TEST_ACTOR) == []
    assert ModerationReview.objects.count() == count


def test_every_verdict_is_audited(publisher):
    sku = publish_sku(publisher, activate=False)
    events = AuditEvent.objects.filter(action="sku.moderation_reviewed", subject_id=str(sku.pk))
    assert sorted(event.data["subject"] for event in events) == ["artifact", "listing", "manifest"]
    assert {event.data["outcome"] for event in events} == {"pass"}
