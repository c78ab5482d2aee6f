from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit"

    def ready(self) -> None:
        from marketplace.dbroles import restrict

        # What the platform's database role may do to the audit log (marketplace.dbroles):
        # append and read; update an event only to seal it (the seal trigger checks how);
        # never delete, truncate, or write the chain head, which the seal trigger moves.
        restrict(
            "audit_event",
            "SELECT",
            "INSERT",
            update_columns=("sequence", "prev_hash", "hash", "occurred_at"),
        )
        restrict("audit_chain_head", "SELECT")
        restrict("audit_checkpoint", "SELECT", "INSERT")
        restrict("audit_export", "SELECT", "INSERT")
