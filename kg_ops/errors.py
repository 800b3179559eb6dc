"""User-facing errors. The CLI prints their message (no traceback) and exits with status 2:
every message names the file/row/URI at fault and says what to do.

:func:`explain` is the one mapping of everything else a stage can raise (storage, Ray, the OS)
to such a message; ``kgops --debug`` adds the traceback."""

from __future__ import annotations

import sys

MAX_MESSAGE = 2000   # characters of one error message shown to a user (the rest is elided)
EXIT_USER = 2        # bad input, configuration or environment: the message says what to do
EXIT_BUG = 1         # an unexpected error: a bug to report, with the --debug traceback


class KGOpsError(RuntimeError):
    """Base class of errors caused by input or configuration, not by a bug."""


class RayConnectError(KGOpsError):
    """The Ray cluster could not be reached in time."""


def cap(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def snippet(raw: object, limit: int = 120) -> str:
    """A short, printable excerpt of an input line for error messages (repr, capped)."""
    text = repr(raw)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _ray_cause(exc: BaseException) -> BaseException | None:
    """The exception a Ray task, actor or Train worker raised, when ``exc`` wraps one."""
    if "ray" not in sys.modules:
        return None
    for attr in ("worker_failures",):   # ray.train WorkerGroupError: {rank: exception}
        failures = getattr(exc, attr, None)
        if isinstance(failures, dict) and failures:
            return next(iter(failures.values()))
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return cause
    return None


def root_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task, actor or Train worker raised, out of Ray's wrappers
    (RayTaskError, WorkerGroupError); ``exc`` itself when it wraps nothing."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        # Unwrap before testing: Ray's RayTaskError subclasses the remote error's own class
        # (an "RayTaskError(KGOpsError)") and its text is the remote traceback.
        inner = _ray_cause(exc)
        if inner is None:
            break
        exc = inner
    return exc


def explain(exc: BaseException) -> tuple[str, int]:
    """(message, exit status) for any exception a stage raised."""
    exc = root_cause(exc)
    if isinstance(exc, KGOpsError):
        return cap(str(exc)), EXIT_USER
    if isinstance(exc, FileNotFoundError):
        return cap(f"{exc}. Check the path, or run the stage that produces it first."), EXIT_USER
    if isinstance(exc, PermissionError):
        return cap(f"{exc}. Fix the permissions or choose another location."), EXIT_USER
    if isinstance(exc, MemoryError):
        return ("out of memory. Use more partitions/workers or a machine with more memory.",
                EXIT_USER)
    name = type(exc).__name__
    if "ray" in sys.modules:
        msg = _explain_ray(exc)
        if msg:
            return cap(msg), EXIT_USER
    first = (str(exc).strip().splitlines() or [""])[0]
    return (cap(f"unexpected {name}: {first} (a bug in kg_ops or an environment problem; "
                "rerun with `kgops --debug ...` for the traceback and report it)"), EXIT_BUG)


def _explain_ray(exc: BaseException) -> str | None:
    import ray.exceptions as rx

    if isinstance(exc, rx.ActorDiedError | rx.WorkerCrashedError | rx.NodeDiedError):
        return (f"a Ray worker process died ({type(exc).__name__}): usually out of memory or "
                "killed from outside. See the Ray logs; use more workers or memory and rerun "
                "(finished stages are reused)")
    if isinstance(exc, rx.ObjectLostError | rx.OwnerDiedError):
        return f"Ray lost an intermediate result ({type(exc).__name__}); rerun the stage"
    if isinstance(exc, rx.RaySystemError | rx.GetTimeoutError):
        return f"the Ray cluster failed ({type(exc).__name__}: {exc}); check it and rerun"
    if isinstance(exc, rx.RuntimeEnvSetupError):
        return f"Ray could not set up the job's runtime environment: {exc}"
    return None
