"""Signing the chain's head: a checkpoint pins every event up to it to the audit key."""

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.chain import checkpoint_message
from audit.models import AuditEvent, Checkpoint
from audit.signing_keys import signing_key_active
from marketplace.jwk import b64url
from marketplace.keystore import signer_for
from marketplace.models import SigningKeyPurpose


def checkpoint_create() -> Checkpoint | None:
    """Signs the last committed event with the audit key. None when nothing new was appended
    since the last checkpoint."""
    if not AuditEvent.objects.exists():
        return None
    # The key first: creating it appends an event, which this checkpoint then covers.
    signer = signer_for(signing_key_active(purpose=SigningKeyPurpose.AUDIT))
    last = AuditEvent.objects.order_by("-sequence").values("sequence", "hash").first()
    if last is None or Checkpoint.objects.filter(sequence__gte=last["sequence"]).exists():
        return None
    signed_at = timezone.now()
    message = checkpoint_message(
        sequence=last["sequence"], chain_hash=last["hash"], signed_at=signed_at, key_id=signer.kid
    )
    checkpoint = Checkpoint(
        sequence=last["sequence"],
        hash=last["hash"],
        signed_at=signed_at,
        key_id=signer.kid,
        signature=b64url(signer.sign(message)),
    )
    try:
        with transaction.atomic():
            checkpoint.save()
    except IntegrityError:
        # Two beats raced to sign the same head: the other one's checkpoint is as good.
        return None
    return checkpoint
