"""Rate limits of the API: per token (``GRAFT_API_RATE``), and per address for wrong tokens."""

from __future__ import annotations

import logging
from typing import Any

from rest_framework import authentication, exceptions
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


class FailedTokenThrottle(SimpleRateThrottle):
    """Counts wrong API tokens per client address (at most ``rate`` within its window).

    DRF authenticates before it throttles, so ``TokenRateThrottle`` never sees a request
    whose token is wrong: without this, anyone could send wrong tokens as fast as the
    server answers, each costing a database lookup. Like ``TokenRateThrottle``, it lets
    requests through when the cache cannot be reached.
    """

    scope = "token_failures"
    rate = "60/minute"

    def get_cache_key(self, request: Request, view: object) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

    def seconds_blocked(self, request: Request) -> float | None:
        """Seconds until this address may try a token again; None when it may now."""
        if not self._load(request):
            return None
        return self.wait() if len(self.history) >= self.num_requests else None

    def record_failure(self, request: Request) -> None:
        if not self._load(request):
            return
        self.history.insert(0, self.now)
        try:
            self.cache.set(self.key, self.history, self.duration)
        except Exception:
            logger.warning("Rate-limit cache unavailable; failure not counted", exc_info=True)

    def _load(self, request: Request) -> bool:
        """Read this address's failures within the window; False if the cache is down."""
        try:
            self.key = self.get_cache_key(request, None)
            self.history = self.cache.get(self.key, [])
        except Exception:
            logger.warning("Rate-limit cache unavailable; token check allowed", exc_info=True)
            return False
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        return True


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's ``Authorization: Token <key>`` check, refusing (429) an address that sent
    ``FailedTokenThrottle.rate`` wrong tokens within its window, before the lookup.

    Every token sent from that address is refused until the window has passed, a right
    one too: telling them apart would take the lookup the limit is there to spare. Behind
    a proxy the address is the proxy's unless DRF's ``NUM_PROXIES`` is set.
    """

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        if not authentication.get_authorization_header(request).lower().startswith(b"token "):
            return None  # no token: another authenticator (or none) decides
        throttle = FailedTokenThrottle()
        wait = throttle.seconds_blocked(request)
        if wait is not None:
            raise exceptions.Throttled(
                wait, detail="Too many wrong API tokens from this address; try again later."
            )
        try:
            return super().authenticate(request)
        except exceptions.AuthenticationFailed:
            throttle.record_failure(request)
            raise
