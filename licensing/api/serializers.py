from typing import Any

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

    token = serializers.CharField(help_text="The license's compact JWS.")

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
        "`expired`, `revoked`, `unknown-license: …`."
    )
    license = serializers.DictField(
        allow_null=True, help_text="The token's claims, when its signature verified."
    )


class DeliverySerializer(serializers.Serializer):
    download_url = serializers.URLField()
    expires_at = serializers.DateTimeField()
    sha256 = serializers.CharField(help_text="SHA-256 of the package (what you download).")
    artifact_sha256 = serializers.CharField(help_text="SHA-256 of the artifact once decrypted.")
    format = serializers.CharField()
    size = serializers.IntegerField(help_text="The package's size in bytes.")
    decryption_key = serializers.CharField(
        allow_null=True, help_text="The data key, base64url; null when `wrapped_key` is given."
    )
    wrapped_key = serializers.CharField(
        allow_null=True,
        help_text="The data key sealed to your registered X25519 key (HPKE), base64url.",
    )
    downloads_left = serializers.IntegerField()
    proof = serializers.UUIDField(allow_null=True)


class ProofSerializer(serializers.ModelSerializer):
    class Meta:
        model = Proof
        fields = ["id", "order", "delivery", "payload", "fingerprint", "token", "signer_kid"]
        read_only_fields = fields


class DeliveryKeySerializer(serializers.Serializer):
    public_key = serializers.CharField(
        help_text="Your X25519 public key: base64url of its 32 raw bytes, or PEM."
    )
    updated_at = serializers.DateTimeField(read_only=True)
