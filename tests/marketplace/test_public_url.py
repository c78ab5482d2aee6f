"""The links the platform makes (checkout pages, success and cancel pages, downloads) follow
MARKETPLACE_PORT when MARKETPLACE_PUBLIC_URL is unset, in whatever process reads the settings:
gunicorn, the worker, a command."""

from tests.marketplace.test_settings import manage

PRINT_URLS = (
    "from django.conf import settings; "
    "print(settings.PUBLIC_URL, settings.CHECKOUT_SUCCESS_URL, settings.CHECKOUT_CANCEL_URL)"
)


def test_the_public_url_follows_the_port():
    result = manage("shell", "-v", "0", "-c", PRINT_URLS, MARKETPLACE_PORT="8199")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "http://127.0.0.1:8199",
        "http://127.0.0.1:8199/checkout/success",
        "http://127.0.0.1:8199/checkout/cancelled",
    ]


def test_without_a_port_it_is_the_default_one():
    result = manage("shell", "-v", "0", "-c", PRINT_URLS)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "http://127.0.0.1:8085"


def test_a_public_url_that_is_set_wins_over_the_port():
    result = manage(
        "shell",
        "-v",
        "0",
        "-c",
        PRINT_URLS,
        MARKETPLACE_PORT="8199",
        MARKETPLACE_PUBLIC_URL="https://shop.example/",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "https://shop.example",
        "https://shop.example/checkout/success",
        "https://shop.example/checkout/cancelled",
    ]
