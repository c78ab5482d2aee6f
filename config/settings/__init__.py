"""Picks the settings module for MARKETPLACE_SERVICE_ENV (dev, staging or prod), read from the
same source as every setting (config.env: the environment and, when asked, the .env file)."""

from config.env import service_env

if service_env() == "dev":
    from config.settings.local import *
else:
    from config.settings.production import *
