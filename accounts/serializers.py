from __future__ import annotations

from typing import Any

from django.contrib.auth import password_validation
from rest_framework import serializers

from accounts import usernames
from accounts.models import User


class TextField(serializers.CharField):
    """Only JSON strings: DRF's CharField turns `0` into "0", which the schema
    (`type: string`) forbids."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class PatternField(TextField, serializers.RegexField):
    pass


class CredentialsSerializer(serializers.Serializer):
    username = TextField(max_length=150)
    password = TextField(max_length=4096, trim_whitespace=False)


class RegisterSerializer(CredentialsSerializer):
    username = PatternField(
        r"^[\w.@+-]+\Z",
        max_length=150,
        error_messages={"invalid": "letters, digits and @/./+/-/_ only"},
    )

    def validate_username(self, value: str) -> str:
        try:
            return usernames.check(value)
        except usernames.Refused as refused:
            raise serializers.ValidationError(str(refused)) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        candidate = User(username=attrs["username"])
        try:
            password_validation.validate_password(attrs["password"], candidate)
        except Exception as exc:  # django ValidationError → DRF's, naming the field
            raise serializers.ValidationError(
                {"password": list(getattr(exc, "messages", [str(exc)]))}
            ) from None
        return attrs
