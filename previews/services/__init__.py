"""Writes of previews (see each module)."""

from previews.services.material import (
    Upload,
    preview_blockers,
    preview_material_add,
    preview_material_withdraw,
    sku_preview_set,
)
from previews.services.sessions import (
    SYSTEM,
    PreviewOpened,
    preview_buyer_end,
    preview_end,
    preview_expire,
    preview_open,
    preview_open_blockers,
    preview_start,
    preview_teardown,
    preview_url,
    preview_wait,
)
from previews.services.upkeep import (
    Isolation,
    SweepResult,
    gauges_refresh,
    preview_pause_lift,
    preview_revoke,
    previews_gc,
    previews_isolate,
    previews_sweep,
)

__all__ = [
    "SYSTEM",
    "Isolation",
    "PreviewOpened",
    "SweepResult",
    "Upload",
    "gauges_refresh",
    "preview_blockers",
    "preview_buyer_end",
    "preview_end",
    "preview_expire",
    "preview_material_add",
    "preview_material_withdraw",
    "preview_open",
    "preview_open_blockers",
    "preview_pause_lift",
    "preview_revoke",
    "preview_start",
    "preview_teardown",
    "preview_url",
    "preview_wait",
    "previews_gc",
    "previews_isolate",
    "previews_sweep",
    "sku_preview_set",
]
