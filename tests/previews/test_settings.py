"""The preview settings are checked at start: a bad value refuses to start, naming it."""

import pytest

from tests.marketplace.test_settings import PRODUCTION, manage


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "MARKETPLACE_PREVIEW_PROVISIONER",
            "docker",
            "MARKETPLACE_PREVIEW_PROVISIONER is 'docker'; use local or kubernetes",
        ),
        (
            "MARKETPLACE_PREVIEW_MAX_OPEN_PER_BUYER",
            "0",
            "MARKETPLACE_PREVIEW_MAX_OPEN_PER_BUYER must be at least 1, not 0",
        ),
        (
            "MARKETPLACE_PREVIEW_CAPACITY",
            "-1",
            "MARKETPLACE_PREVIEW_CAPACITY must be at least 0, not -1",
        ),
        (
            "MARKETPLACE_PREVIEW_SANDBOX_PROCESSES",
            "1",
            "MARKETPLACE_PREVIEW_SANDBOX_PROCESSES must be at least 4, not 1",
        ),
    ],
)
def test_a_bad_preview_setting_refuses_to_start_in_any_environment(variable, value, message):
    result = manage("check", **{variable: value})

    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"MARKETPLACE_PREVIEW_BASE_URL": "http://previews.example"},
            "MARKETPLACE_PREVIEW_BASE_URL: must be an https:// URL",
        ),
        (
            {"MARKETPLACE_PREVIEW_PROVISIONER": "kubernetes"},
            "MARKETPLACE_PREVIEW_KUBE_IMAGE: not set (the image the sandboxes run)",
        ),
    ],
)
def test_production_refuses_preview_settings_it_cannot_run_safely(override, message):
    result = manage("check", **{**PRODUCTION, **override})

    assert result.returncode != 0
    assert message in result.stderr
    assert result.stderr.count("\n  - ") == 1


def test_production_takes_a_separate_https_preview_origin():
    result = manage(
        "check", **{**PRODUCTION, "MARKETPLACE_PREVIEW_BASE_URL": "https://previews.example"}
    )

    assert result.returncode == 0, result.stderr
