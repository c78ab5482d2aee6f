from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Accounts and platform"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from marketplace.roles import roles_sync_after_migrate

        # Staff roles are groups whose permissions follow the code; they are re-synced after
        # every migrate, once the permissions they name exist.
        post_migrate.connect(roles_sync_after_migrate, sender=self)
