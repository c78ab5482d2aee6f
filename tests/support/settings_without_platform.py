"""The test settings without the app that joins the others together (config.apps): what a
deployment that lost it would run. Used by tests that show such a start is refused."""

from config.settings.test import *  # noqa: F403

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "config.apps.PlatformConfig"]  # noqa: F405
