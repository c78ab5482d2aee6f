"""Picks the settings module for MARKETPLACE_SERVICE_ENV (dev, staging or prod)."""

import os

from django.core.exceptions import ImproperlyConfigured

_service_env = os.environ.get("MARKETPLACE_SERVICE_ENV", "dev")

if _service_env == "dev":
    from config.settings.local import *
elif _service_env in ("staging", "prod"):
    from config.settings.production import *
else:
    raise ImproperlyConfigured(
        f"MARKETPLACE_SERVICE_ENV must be dev, staging or prod, not {_service_env!r}."
    )
