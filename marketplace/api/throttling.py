"""Rate limits of the API."""

from typing import TYPE_CHECKING

from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle

if TYPE_CHECKING:  # rest_framework.views imports this module while it defines APIView
    from rest_framework.views import APIView


class SignedInRateThrottle(UserRateThrottle):
    """The `user` rate, for signed-in callers only.

    DRF's UserRateThrottle counts anonymous requests too, by client address, in a history of
    its own next to AnonRateThrottle's: on every anonymous request a second list of
    timestamps is read from Redis, unpickled, pickled and written back, for a limit that
    `anon` reaches first as long as it is set no higher than `user` (1200/min and 2400/min by
    default).
    """

    def get_cache_key(self, request: Request, view: "APIView") -> str | None:
        if not (request.user and request.user.is_authenticated):
            return None
        return super().get_cache_key(request, view)
