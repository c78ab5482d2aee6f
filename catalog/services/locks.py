"""Row locks, taken in primary-key order by the services that write."""

from catalog.models import Sku


def sku_lock(sku_id: int) -> Sku:
    """Locks one SKU row for the rest of the transaction and returns its current state."""
    return (
        Sku.objects.select_for_update(of=("self",))
        .select_related("partner", "category", "artifact")
        .get(pk=sku_id)
    )
