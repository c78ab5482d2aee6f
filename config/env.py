"""The one source every setting is read from: the process environment and, when asked, a
`.env` file.

`MARKETPLACE_READ_ENV_FILE=1` (in the process environment) reads `MARKETPLACE_ENV_FILE`
(default: `.env` in the project folder); a variable set in the process environment wins over
the file. The file is read here, once, before anything chooses by a variable, so the settings
module chosen for `MARKETPLACE_SERVICE_ENV` and every value it reads agree on one source.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

if env.bool("MARKETPLACE_READ_ENV_FILE", default=False):
    ENV_FILE = Path(env.str("MARKETPLACE_ENV_FILE", default=str(BASE_DIR / ".env")))
    if not ENV_FILE.is_file():
        raise ImproperlyConfigured(
            f"MARKETPLACE_READ_ENV_FILE is set but {ENV_FILE} is not a file "
            "(set MARKETPLACE_ENV_FILE to the file to read)"
        )
    # Sets each variable of the file that the process environment does not already have.
    env.read_env(str(ENV_FILE))

SERVICE_ENVS = ("dev", "staging", "prod")


def service_env() -> str:
    """`MARKETPLACE_SERVICE_ENV`: dev (the default), staging or prod."""
    value = env.str("MARKETPLACE_SERVICE_ENV", default="dev")
    if value not in SERVICE_ENVS:
        raise ImproperlyConfigured(
            f"MARKETPLACE_SERVICE_ENV must be dev, staging or prod, not {value!r}."
        )
    return value
