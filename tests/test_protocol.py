"""Pure protocol functions: parsing, validation, sizes, the token bucket."""

from __future__ import annotations

import pytest

from realtime.node.ratelimit import TokenBucket
from realtime.protocol import (
    Code,
    TetherError,
    non_negative,
    parse_frame,
    storable_int,
    user_repr,
    utf8_length_exceeds,
    valid_id,
)


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        "[1,2]",
        '"str"',
        "42",
        "null",
        "{",
        "[" * 100000,
        '{"type": "ping", "ts": NaN}',
        '{"type": "ping", "ts": Infinity}',
    ],
)
def test_not_a_json_object_is_bad_json(text: str) -> None:
    with pytest.raises(TetherError) as info:
        parse_frame(text)
    assert info.value.code == Code.BAD_JSON


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ('{"id": "a"}', "type"),
        ('{"type": 5}', "type"),
        ('{"type": "ping", "id": ""}', "id"),
        ('{"type": "ping", "id": 7}', "id"),
        ('{"type": "ping", "id": "' + "x" * 65 + '"}', "id"),
        # Valid JSON, but no number a reader holds (RFC 8259 lets it set bounds).
        ('{"type": "ping", "ts": 1e400}', "ts"),
        ('{"type": "ping", "ts": -' + "9" * 5000 + "}", "ts"),
        ('{"type": "sync", "positions": {"k3": ' + "1" * 4301 + "}}", "positions.k3"),
        ('{"type": "presence.query", "users": [1, 2e999]}', "users[1]"),
    ],
)
def test_bad_fields_are_bad_request_naming_the_field(frame: str, field: str) -> None:
    with pytest.raises(TetherError) as info:
        parse_frame(frame)
    assert info.value.code == Code.BAD_REQUEST
    assert info.value.message.startswith(f"{field}:")


def test_id_of_a_frame_with_a_number_out_of_range_is_echoed() -> None:
    with pytest.raises(TetherError) as info:
        parse_frame('{"type": "read", "id": "c5", "seq": ' + "7" * 4301 + "}")
    assert info.value.frame() == {
        "type": "error",
        "id": "c5",
        "code": "bad_request",
        "message": "seq: number out of range",
        "field": "seq",
    }
    with pytest.raises(TetherError) as invalid_id:
        parse_frame('{"type": "read", "id": 5, "seq": 1e999}')
    assert "id" not in invalid_id.value.frame()


def test_id_of_a_frame_with_bad_type_is_echoed() -> None:
    with pytest.raises(TetherError) as info:
        parse_frame('{"id": "r1"}')
    assert info.value.frame()["id"] == "r1"


def test_unknown_fields_are_kept_but_ignored() -> None:
    frame = parse_frame('{"type": "ping", "id": "' + "x" * 64 + '", "extra": [1]}')
    assert frame.type == "ping" and len(frame.id or "") == 64


def test_utf8_length() -> None:
    assert not utf8_length_exceeds("a" * 100, 100)
    assert utf8_length_exceeds("a" * 101, 100)
    assert not utf8_length_exceeds("é" * 50, 100)  # 2 bytes each
    assert utf8_length_exceeds("é" * 51, 100)
    assert utf8_length_exceeds("😀" * 26, 100)


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0, 0, 0]
    retry = bucket.take(0.0)
    assert 90 <= retry <= 100
    assert bucket.take(0.1) == 0  # one token back after 1/rate seconds
    assert bucket.take(0.1) > 0


def test_unpaired_surrogate_escapes_are_bad_json_and_pairs_are_fine() -> None:
    with pytest.raises(TetherError) as info:
        parse_frame('{"type":"send","body":"a\\ud800b"}')
    assert info.value.code == Code.BAD_JSON
    with pytest.raises(TetherError):
        parse_frame('{"type":"send","nested":{"k":["\\uDFFF"]}}')
    frame = parse_frame('{"type":"send","body":"\\ud83d\\ude00"}')
    assert frame.get("body") == "\U0001f600"


@pytest.mark.parametrize("value", [0, 1, 2**63 - 1, 10**30])
def test_non_negative_accepts_integers_from_zero(value: int) -> None:
    assert non_negative(value, "seq") == value


@pytest.mark.parametrize("value", [-1, True, False, 1.0, "1", None, [1], {"a": 1}])
def test_non_negative_refuses_the_rest_naming_the_field(value: object) -> None:
    with pytest.raises(TetherError) as refused:
        non_negative(value, "since.offset")
    assert refused.value.code == Code.BAD_REQUEST
    assert "since.offset" in str(refused.value) and "integer >= 0" in str(refused.value)


def test_ids_are_strings_of_1_to_64_characters() -> None:
    assert valid_id("a") and valid_id("x" * 64) and valid_id("é" * 64)
    assert not valid_id("") and not valid_id("x" * 65)
    assert not valid_id(1) and not valid_id(None) and not valid_id(b"a")


def test_storable_integers_are_those_a_bigint_column_holds() -> None:
    assert storable_int(2**63 - 1) and storable_int(-(2**63 - 1)) and storable_int(0)
    assert not storable_int(2**63) and not storable_int(-(2**64))


def test_the_user_shape_is_id_and_username() -> None:
    class Someone:
        pk = 7

        def get_username(self) -> str:
            return "ann"

    assert user_repr(Someone()) == {"id": 7, "username": "ann"}
