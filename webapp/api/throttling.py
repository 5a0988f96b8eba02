"""Per-token rate limiting for the API (rate: ``GRAFT_API_RATE``)."""

from __future__ import annotations

import logging

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

logger = logging.getLogger(__name__)


class TokenRateThrottle(SimpleRateThrottle):
    """Counts requests per API token (per user for session logins, per IP otherwise).

    The counters live in Django's cache. If the cache cannot be reached the request is let
    through: a rate limit that fails closed would take classification down with the cache.
    """

    scope = "token"

    def get_cache_key(self, request: Request, view: object) -> str:
        auth = request.auth
        key = getattr(auth, "key", None)
        if key:
            ident = f"token:{key}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def allow_request(self, request: Request, view: object) -> bool:
        if self.rate is None:
            return True
        try:
            return super().allow_request(request, view)
        except Exception:  # The cache backend raises its own types (redis, socket...).
            logger.warning("Rate-limit cache unavailable; request allowed", exc_info=True)
            return True
