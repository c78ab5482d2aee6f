"""The platform as a whole: what joins the apps together once all of them are loaded."""

from django.apps import AppConfig


class PlatformConfig(AppConfig):
    """Listed last in INSTALLED_APPS, so every app is ready before it wires them.

    An app hands work to the app above it through an interface it declares; the
    implementation is registered here, where a reader finds every such joint in one place.
    """

    name = "config"
    label = "platform"
    verbose_name = "Platform"

    def ready(self) -> None:
        from licensing.handover import LicensingReceiver
        from orders import handover

        handover.receiver_register(LicensingReceiver())
