"""A Content-Length that is not a number of bytes is a 400 problem on every path."""

import pytest

FULL_WIDTH_DIGITS = "\uff11\uff12"  # str.isdigit() takes them; a byte count does not


@pytest.mark.parametrize("length", ["abc", "-5", "1e3", FULL_WIDTH_DIGITS])
@pytest.mark.parametrize("path", ["/api/v1/skus", "/marketplace/stripe/webhook", "/health"])
def test_a_content_length_that_is_not_a_number_of_bytes_is_400(client, path, length):
    answer = client.generic("POST", path, b"", CONTENT_LENGTH=length)

    assert answer.status_code == 400
    assert answer["Content-Type"] == "application/problem+json"
    assert answer.json()["code"] == "bad-content-length"
