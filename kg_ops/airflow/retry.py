"""The one retry policy for calls to the Ray dashboard (tenacity), shared by the hook's sync and
async calls and so by the operator, sensor and trigger.

Retried, with exponential backoff under one deadline per call: no answer (refused, DNS,
timeout) and Ray's transient answers (HTTP 500 "No available agent to submit job", 502, 503,
504: a head whose job agent is not up yet, a proxy restarting). Not retried: every other
answer (400, 401, 403, 404, ...), which fails at once with its own message. Configured from the
connection's extras ``retry_deadline`` (seconds; 0 = no retries), ``retry_initial_wait`` and
``retry_max_wait``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tenacity

TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
# HTTP 500 is also Ray's answer to a submission id that already exists: never transient.
_PERMANENT_500 = ("already exists",)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How long and how often one dashboard call is retried."""

    deadline_s: float = 120.0
    initial_wait_s: float = 0.5
    max_wait_s: float = 15.0

    EXTRAS = {"retry_deadline": "deadline_s", "retry_initial_wait": "initial_wait_s",
              "retry_max_wait": "max_wait_s"}

    def __post_init__(self) -> None:
        if self.deadline_s < 0 or self.initial_wait_s <= 0 or self.max_wait_s <= 0:
            raise ValueError("extra 'retry_deadline' must be >= 0 and 'retry_initial_wait', "
                             "'retry_max_wait' > 0 seconds")

    @classmethod
    def from_extras(cls, extra: dict[str, Any]) -> RetryPolicy:
        values = {field: float(extra[key]) for key, field in cls.EXTRAS.items()
                  if extra.get(key) not in (None, "")}
        return cls(**values)

    def _kwargs(self, log: logging.Logger) -> dict[str, Any]:
        import tenacity

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("%s; retry %d in %.1fs (retrying for up to %.0fs)", exc,
                        state.attempt_number, state.upcoming_sleep, self.deadline_s)

        return {"retry": tenacity.retry_if_exception(is_transient),
                "stop": tenacity.stop_after_delay(self.deadline_s),
                "wait": tenacity.wait_exponential(multiplier=self.initial_wait_s,
                                                  max=self.max_wait_s),
                "before_sleep": before_sleep, "reraise": True}

    def call(self, fn, log: logging.Logger) -> Any:
        """``fn()``, retried while it fails transiently and the deadline allows; each retry
        logged (the error names the connection and the call)."""
        import tenacity

        return tenacity.Retrying(**self._kwargs(log))(fn)

    async def acall(self, fn, log: logging.Logger) -> Any:
        """``await fn()`` (``fn`` a coroutine function), retried like :meth:`call`, sleeping
        without blocking the loop."""
        import tenacity

        return await tenacity.AsyncRetrying(**self._kwargs(log))(fn)


def is_transient(exc: BaseException) -> bool:
    """No answer, or an answer that says "try again later"."""
    from kg_ops.airflow.hooks.ray import RayApiError, RayUnreachableError

    if isinstance(exc, RayUnreachableError):
        return True
    if isinstance(exc, RayApiError) and exc.status in TRANSIENT_STATUS:
        return not any(s in str(exc) for s in _PERMANENT_500)
    return False
