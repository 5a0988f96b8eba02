"""List pagination for the API: ``?limit=&offset=``, 50 rows unless asked, never more than
``MAX_LIMIT`` (a client asking for ``limit=1000000`` would otherwise get every row, with
every job's epoch history, in one answer)."""

from __future__ import annotations

from rest_framework import pagination

MAX_LIMIT = 500


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    max_limit = MAX_LIMIT
