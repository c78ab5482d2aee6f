"""marketplace.clients: the client address a download log records is the one DRF's throttles
tell clients apart by, for every MARKETPLACE_NUM_PROXIES."""

import pytest
from django.test import RequestFactory
from rest_framework.throttling import BaseThrottle

from marketplace.clients import client_ident, client_ip

HEADERS = [
    {},
    {"HTTP_X_FORWARDED_FOR": "198.51.100.23"},
    {"HTTP_X_FORWARDED_FOR": "192.0.2.66, 198.51.100.23"},
    {"HTTP_X_FORWARDED_FOR": "192.0.2.66,198.51.100.23, 203.0.113.9"},
    {"HTTP_X_FORWARDED_FOR": " 2001:db8::1 , 198.51.100.23"},
    {"HTTP_X_FORWARDED_FOR": "not an address, 198.51.100.23"},
    {"HTTP_X_FORWARDED_FOR": ""},
]


@pytest.mark.parametrize("proxies", [None, 0, 1, 2, 5])
@pytest.mark.parametrize("headers", HEADERS)
def test_the_ident_is_drfs_throttle_ident(settings, proxies, headers):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": proxies}
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", **headers)
    assert client_ident(request) == BaseThrottle().get_ident(request)


@pytest.mark.parametrize(
    ("proxies", "forwarded", "logged"),
    [
        (0, "192.0.2.66, 198.51.100.23", "10.0.0.2"),  # no trusted proxy: the connection
        (1, None, "10.0.0.2"),  # behind a proxy that added nothing
        (1, "192.0.2.66, 198.51.100.23", "198.51.100.23"),  # the one the balancer added
        (2, "192.0.2.66, 198.51.100.23, 10.0.0.9", "198.51.100.23"),
        (1, "192.0.2.66, 2001:DB8:0:0::1", "2001:db8::1"),
        (1, "192.0.2.66, unknown", "10.0.0.2"),  # not an address: the connection's
        (1, "192.0.2.66, ", "10.0.0.2"),
    ],
)
def test_the_logged_address_is_the_trusted_clients(settings, proxies, forwarded, logged):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": proxies}
    extra = {} if forwarded is None else {"HTTP_X_FORWARDED_FOR": forwarded}
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", **extra)
    assert client_ip(request) == logged


def test_no_address_at_all_is_none(settings):
    request = RequestFactory().get("/", REMOTE_ADDR="")
    assert client_ip(request) is None
