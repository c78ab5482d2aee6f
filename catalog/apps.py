from django.apps import AppConfig


class CatalogConfig(AppConfig):
    name = "catalog"
    verbose_name = "Catalog"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from catalog.search import search_document_sync_after_migrate

        # The search column is built in one text search configuration; a migrate after the
        # setting changed rebuilds it (catalog.search.search_document_sync).
        post_migrate.connect(search_document_sync_after_migrate, sender=self)
