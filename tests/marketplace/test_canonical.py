"""The canonical encoding docs/formats/audit-chain-v1.md documents, pinned byte for byte."""

import pytest

from marketplace.canonical import canonical_json


def test_fixed_vector():
    value = {
        "b": [1, True, None, "x"],
        "a": {"é": "ü", "Z": "tab\there", "ctl": "\x1f", "quote": '"\\'},
        "A": -7,
    }
    assert (
        canonical_json(value)
        == (
            '{"A":-7,"a":{"Z":"tab\\there","ctl":"\\u001f","quote":"\\"\\\\","é":"ü"},'
            '"b":[1,true,null,"x"]}'
        ).encode()
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"ratio": 0.5}, r"\$\.ratio is a floating-point number"),
        ({"deep": [{"x": 1.0}]}, r"\$\.deep\[0\]\.x is a floating-point number"),
        ({1: "a"}, "non-string key"),
        ({"when": object()}, "type object"),
    ],
)
def test_values_without_one_textual_form_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        canonical_json(value)
