"""What the key store raises."""


class KeyStoreError(Exception):
    """A key cannot be used or made: the master key is wrong, the key is unknown or not
    active, or the backend refused the request. Retrying the same call will not help."""


class KeyStoreUnavailable(KeyStoreError):
    """The backend (KMS, the signing proxy) did not answer, timed out or failed on its side
    (5xx, throttling). Transient: the caller may retry later, with backoff."""
