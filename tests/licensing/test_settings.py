"""Licensing's settings that cannot work together are refused when the platform starts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("heartbeat", "stale"), [("60", "60"), ("90", "60")])
def test_a_heartbeat_not_shorter_than_the_stale_time_is_refused(heartbeat, stale):
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "MARKETPLACE_DELIVERY_HEARTBEAT_SECONDS": heartbeat,
            "MARKETPLACE_DELIVERY_STALE_SECONDS": stale,
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode != 0
    assert (
        f"ImproperlyConfigured: MARKETPLACE_DELIVERY_HEARTBEAT_SECONDS ({heartbeat}) must be "
        f"less than MARKETPLACE_DELIVERY_STALE_SECONDS ({stale})"
    ) in done.stderr


def test_a_heartbeat_shorter_than_the_stale_time_starts():
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "MARKETPLACE_DELIVERY_HEARTBEAT_SECONDS": "5",
            "MARKETPLACE_DELIVERY_STALE_SECONDS": "30",
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
