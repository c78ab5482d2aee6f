from django.apps import AppConfig


class PreviewsConfig(AppConfig):
    name = "previews"
    verbose_name = "Previews"

    def ready(self) -> None:
        from previews.approvals import register_approval_kinds

        # Isolating the pool of every SKU waits for a second Security member
        # (accounts.approvals).
        register_approval_kinds()
