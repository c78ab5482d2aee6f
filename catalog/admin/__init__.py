"""Content ops run the catalog from here. Every save and action goes through catalog.services,
so the admin enforces exactly the rules the API and the commands do."""

from catalog.admin import artifacts, categories, moderation, partners, skus

__all__ = ["artifacts", "categories", "moderation", "partners", "skus"]
