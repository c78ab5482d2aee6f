from django.apps import AppConfig


class PeersConfig(AppConfig):
    name = "bench.audit.peers"
    label = "peers"
