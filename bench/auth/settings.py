"""Settings for the authentication benchmark: the project's own, read from the environment that
bench/auth/run.py sets before Django starts (the provider's issuer, client and API audience;
SQLite in a temporary folder or --database-url; every rate limit out of reach).

The test client calls itself `testserver`, which is allowed here only.
"""

from config.settings import *  # noqa: F403

ALLOWED_HOSTS = [*ALLOWED_HOSTS, "testserver"]  # noqa: F405
