"""Development on a laptop: embedded defaults, password login for staff."""

from config.settings.base import *

# The embedded defaults keep their files here; create the folders they expect.
for _folder in ("files", "broker/queue", "broker/control", "static"):
    (DATA_DIR / _folder).mkdir(parents=True, exist_ok=True)

# Serve admin assets straight from the apps, so a checkout works before collectstatic.
WHITENOISE_USE_FINDERS = True
