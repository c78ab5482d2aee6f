from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Accounts and platform"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from marketplace.dbroles import app_role_grant_after_migrate
        from marketplace.roles import roles_sync_after_migrate

        # Staff roles are groups whose permissions follow the code; they are re-synced after
        # every migrate, once the permissions they name exist.
        post_migrate.connect(roles_sync_after_migrate, sender=self)
        # Every table exists by the time any post_migrate is sent; once per migrate is enough.
        post_migrate.connect(app_role_grant_after_migrate, sender=self)
