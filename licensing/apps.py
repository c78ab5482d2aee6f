from django.apps import AppConfig


class LicensingConfig(AppConfig):
    name = "licensing"
    verbose_name = "Licensing"

    def ready(self) -> None:
        from licensing.approvals import register_approval_kinds

        # Rotating and revoking signing keys wait for a second person (accounts.approvals).
        register_approval_kinds()
