import uuid
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from licensing.models import License, Proof


class LicenseSerializer(serializers.ModelSerializer):
    class Meta:
        model = License
        fields = [
            "id",
            "license_key",
            "token",
            "kid",
            "status",
            "issued_at",
            "expires_at",
            "entitlements",
            "seats",
            "revoked_at",
        ]
        read_only_fields = fields


class VerifyInputSerializer(serializers.Serializer):
    """`{"token": string}` and nothing else. Any string is taken as it is (control characters,
    any length): what is wrong with it is the verdict's reason, not a 400."""

    token = serializers.CharField(
        allow_blank=True,
        trim_whitespace=False,
        help_text="The license's compact JWS (its `token`).",
    )

    def to_internal_value(self, data: Any) -> dict[str, str]:
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ['Send a JSON object: {"token": "<compact JWS>"}.']}
            )
        errors = {
            field: ["Unknown field; the body takes only `token`."]
            for field in sorted(set(data) - {"token"})
        }
        if "token" not in data:
            errors["token"] = ["Required: the license's compact JWS."]
        elif not isinstance(data["token"], str):
            errors["token"] = ["Must be a string (a compact JWS)."]
        if errors:
            raise serializers.ValidationError(errors)
        return {"token": data["token"].strip()}


class VerdictSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    reason = serializers.CharField(
        help_text="`valid`, or why not: `malformed: …`, `unknown-key: …`, `bad-signature: …`, "
        "`not-a-license: …` (a delivery proof, or any other token that is not a license), "
        "`unknown-license: …`, `expired`, `revoked`."
    )
    license = serializers.DictField(
        source="claims",
        allow_null=True,
        help_text="The license's claims when the token is a license this platform issued "
        "(valid, expired or revoked); null otherwise.",
    )


# Renders a DeliveryAccess (licensing.services.delivery_access); `proof` comes from the
# context (licensing.selectors.proof_id_latest).
class DeliverySerializer(serializers.Serializer):
    """Where to download your package, and how to decrypt it."""

    download_url = serializers.URLField()
    expires_at = serializers.DateTimeField()
    sha256 = serializers.CharField(
        source="delivery.package_sha256", help_text="SHA-256 of the package (what you download)."
    )
    artifact_sha256 = serializers.CharField(
        source="delivery.artifact_sha256", help_text="SHA-256 of the artifact once decrypted."
    )
    format = serializers.CharField(source="delivery.format")
    size = serializers.IntegerField(
        source="delivery.package_size", help_text="The package's size in bytes."
    )
    decryption_key = serializers.CharField(
        allow_null=True, help_text="The data key, base64url; null when `wrapped_key` is given."
    )
    wrapped_key = serializers.CharField(
        allow_null=True,
        help_text="The data key sealed to your registered X25519 key (HPKE), base64url.",
    )
    downloads_left = serializers.IntegerField()
    proof = serializers.SerializerMethodField(
        help_text="The id of the signed delivery proof (GET /api/v1/proofs/{id})."
    )

    def get_proof(self, access: Any) -> uuid.UUID | None:
        return self.context.get("proof")


class ProofSerializer(serializers.ModelSerializer):
    class Meta:
        model = Proof
        fields = ["id", "order", "delivery", "payload", "fingerprint", "token", "signer_kid"]
        read_only_fields = fields


# What the service takes (licensing.sealing.load_public_key): 32 bytes whose top bit is clear
# (a canonical X25519 key), as base64url or base64, or in a PEM. In the 43-character form the
# 42nd character holds that bit; in the PEM it is the 58th of the key's base64.
_B64 = "[A-Za-z0-9_+/-]"
_TOP_BIT_CLEAR = "[A-HQ-Xg-nw-z0-3]"
X25519_PUBLIC_KEY_SCHEMA = {
    "type": "string",
    "anyOf": [
        {"pattern": f"^{_B64}{{41}}{_TOP_BIT_CLEAR}{_B64}=?$"},
        {
            "pattern": "^-----BEGIN PUBLIC KEY-----\\nMCowBQYDK2VuAyEA[A-Za-z0-9+/]{41}"
            f"{_TOP_BIT_CLEAR}[AEIMQUYcgkosw048]=\\n-----END PUBLIC KEY-----\\n?$"
        },
    ],
}


@extend_schema_field(X25519_PUBLIC_KEY_SCHEMA)
class X25519PublicKeyField(serializers.JSONField):
    """Any JSON value reaches the service, which names what is wrong with it."""


class DeliveryKeyInputSerializer(serializers.Serializer):
    """`{"public_key": string}` and nothing else; the key itself is checked by the service."""

    public_key = X25519PublicKeyField(
        help_text="Your X25519 public key: base64url (or base64) of its 32 raw bytes, or its "
        "SubjectPublicKeyInfo PEM."
    )

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ['Send a JSON object {"public_key": ...}.']}
            )
        unknown = sorted(set(data) - {"public_key"})
        if unknown:
            raise serializers.ValidationError(
                {field: ["Unknown field; the body takes only `public_key`."] for field in unknown}
            )
        return {"public_key": data.get("public_key")}


class DeliveryKeySerializer(serializers.Serializer):
    public_key = serializers.CharField(
        help_text="Your X25519 public key: base64url of its 32 raw bytes, or PEM."
    )
    updated_at = serializers.DateTimeField(read_only=True)
