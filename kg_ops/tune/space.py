"""The search space of ``kgops tune``: which ``kgops train`` options the trials sample, and
from what.

A space is a JSON object mapping an option (its Python name, as in ``kgops train --help``)
to a domain::

    {"loguniform": [lo, hi]}   {"uniform": [lo, hi]}   {"choice": [v1, v2, ...]}
    {"loguniform": {"adagrad": [lo, hi], "adam": [lo, hi]}, "by": "optimizer"}

The last form gives the bounds per value of another option (a learning rate per optimiser).
Tune samples it as a unit draw ``u`` in [0, 1) mapped onto the bounds of the trial's value of
``by``, so all randomness stays in Tune's seeded search. With ``--residual``, ``out_dim``
follows a sampled ``embedding_dim`` unless the space samples it too (the skip connection
needs them equal). Every bound and choice is checked against the option's type and range
before any trial runs.
"""

from __future__ import annotations

import json
import math
from typing import Any

from kg_ops.config import ConfigError, TrainConfig
from kg_ops.config.tune import TRAIN_OPTIONS_NOT_TUNED
from kg_ops.errors import KGOpsError

KINDS = ("loguniform", "uniform", "choice")

# Small and centred on the default recipe (kg_ops.config.train): each learning rate range
# spans the optimiser's default, dims stay within a 2-core machine's reach.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "optimizer": {"choice": ["adagrad", "adam"]},
    "lr": {"loguniform": {"adagrad": [0.02, 0.5], "adam": [0.0003, 0.003]}, "by": "optimizer"},
    "embedding_dim": {"choice": [512, 1000]},
    "hidden_dim": {"choice": [64, 128]},
    "dropout": {"uniform": [0.0, 0.4]},
    "entity_dropout": {"uniform": [0.0, 0.3]},
    "relation_dropout": {"uniform": [0.0, 0.3]},
    "n3": {"choice": [0.0, 0.001, 0.01]},
    "label_smoothing": {"choice": [0.0, 0.1]},
    "batch_size": {"choice": [512, 1024]},
}


class SpaceError(KGOpsError):
    """A search space that cannot be searched; the message names the file and the option."""


def tunable_options() -> tuple[str, ...]:
    """The ``kgops train`` options a space may sample: what training computes from (recorded),
    except the trials' own inputs and outputs."""
    return tuple(o.name for o in TrainConfig.options()
                 if o.recorded and o.name not in TRAIN_OPTIONS_NOT_TUNED + ("preset",))


class SearchSpace:
    """A checked space: ``domains`` as declared, ``source`` naming where it came from."""

    def __init__(self, domains: dict[str, dict[str, Any]], source: str,
                 base: TrainConfig | None = None):
        self.source = source
        if not isinstance(domains, dict):
            raise self._error(f"must be a JSON object of option -> domain, got "
                              f"{type(domains).__name__}")
        if not domains:
            raise self._error("declares no option to search; give at least one, e.g. "
                              '{"lr": {"loguniform": [0.0003, 0.003]}}')
        known = tunable_options()
        for name, domain in domains.items():
            if name not in known:
                raise self._error(f"{name!r} is not a `kgops train` option a trial can "
                                  f"sample; options: {', '.join(known)}")
            self._check(name, domain, domains, base)
        self.domains = domains

    @classmethod
    def load(cls, spec: str, base: TrainConfig | None = None) -> SearchSpace:
        """``default`` or a JSON file (any artifact-store URI)."""
        if spec == "default":
            return cls(json.loads(json.dumps(DEFAULT_SPACE)), "the default space", base)
        from kg_ops.store import get_store

        where = f"search space {spec}"
        try:
            text = get_store(spec).read_bytes(spec).decode("utf-8")
        except FileNotFoundError:
            raise SpaceError(f"{where}: file not found; pass --space default or the path "
                             "of a JSON file") from None
        if not text.strip():
            raise SpaceError(f"{where}: the file is empty; declare at least one option to "
                             'search, e.g. {"lr": {"loguniform": [0.0003, 0.003]}}')
        try:
            domains = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpaceError(f"{where}: not valid JSON at line {exc.lineno}, column "
                             f"{exc.colno}: {exc.msg}") from None
        return cls(domains, spec, base)

    def _error(self, message: str) -> SpaceError:
        return SpaceError(f"search space ({self.source}): {message}")

    def _check(self, name: str, domain: Any, domains: dict, base: TrainConfig | None) -> None:
        kinds = [k for k in KINDS if isinstance(domain, dict) and k in domain]
        extra = set(domain) - set(KINDS) - {"by"} if isinstance(domain, dict) else set()
        if len(kinds) != 1 or extra:
            raise self._error(f"{name}: a domain is one of {{\"loguniform\": [lo, hi]}}, "
                              f"{{\"uniform\": [lo, hi]}}, {{\"choice\": [...]}} (optionally "
                              f"with \"by\"), got {json.dumps(domain)}")
        kind, by = kinds[0], domain.get("by")
        if by is None:
            self._check_values(name, kind, domain[kind])
            return
        if kind == "choice" or not isinstance(domain[kind], dict):
            raise self._error(f"{name}: with \"by\": {by!r}, {kind} takes bounds per value of "
                              f"{by}, e.g. {{\"adam\": [0.0003, 0.003]}}")
        if by not in tunable_options() or by == name:
            raise self._error(f"{name}: \"by\": {by!r} is not another tunable option")
        needed = self._values_of(by, domains, base)
        missing = [v for v in needed if v not in domain[kind]]
        if missing:
            raise self._error(f"{name}: no bounds for {by}={', '.join(map(str, missing))} "
                              f"(bounds given for {', '.join(domain[kind])})")
        for bounds in domain[kind].values():
            self._check_values(name, kind, bounds)

    def _values_of(self, by: str, domains: dict, base: TrainConfig | None) -> list:
        if by in domains:
            dom = domains[by]
            if not (isinstance(dom, dict) and isinstance(dom.get("choice"), list)):
                raise self._error(f"\"by\": {by!r} must be sampled from a choice")
            return list(dom["choice"])
        return [getattr(base or TrainConfig(partitions="", out=""), by)]

    def _check_values(self, name: str, kind: str, values: Any) -> None:
        opt = TrainConfig.option(name)
        if not isinstance(values, list) or not values:
            raise self._error(f"{name}: {kind} needs a non-empty list, got {json.dumps(values)}")
        if kind != "choice":
            if len(values) != 2 or opt.type not in (int, float) or not values[0] < values[1]:
                raise self._error(f"{name}: {kind} needs [lo, hi] with lo < hi on a numeric "
                                  f"option, got {json.dumps(values)}")
            if kind == "loguniform" and values[0] <= 0:
                raise self._error(f"{name}: loguniform needs lo > 0, got {values[0]}")
        for v in values:
            try:
                opt.check(opt.coerce(v))
            except ConfigError as exc:
                raise self._error(f"{name}: {exc}") from None

    # --- sampling -----------------------------------------------------------------------
    def param_space(self) -> dict[str, Any]:
        """The space in Ray Tune's terms (``Tuner(param_space=...)``)."""
        from ray import tune

        out = {}
        for name, domain in self.domains.items():
            kind = next(k for k in KINDS if k in domain)
            if "by" in domain:
                out[name] = tune.uniform(0.0, 1.0)
            elif kind == "choice":
                out[name] = tune.choice(domain["choice"])
            else:
                lo, hi = domain[kind]
                out[name] = (tune.loguniform if kind == "loguniform" else tune.uniform)(lo, hi)
        return out

    def base_point(self, base: TrainConfig) -> dict[str, Any] | None:
        """The sample of :meth:`param_space` that :meth:`resolve` maps onto ``base``'s own
        recipe (its preset and defaults filled in), or None when a value of it lies outside
        the space. Tune evaluates it first, so a search can confirm the base recipe or beat
        it, never return a worse one for want of trying it."""
        recipe = base.resolved()
        point: dict[str, Any] = {}
        for name, domain in self.domains.items():
            kind = next(k for k in KINDS if k in domain)
            value = getattr(recipe, name)
            bounds = domain[kind]
            if "by" in domain:
                bounds = bounds.get(getattr(recipe, domain["by"]))
                if bounds is None:
                    return None
            if kind == "choice":
                if value not in bounds:
                    return None
                point[name] = value
                continue
            lo, hi = bounds
            if value is None or not lo <= value <= hi:
                return None
            if "by" not in domain:
                point[name] = value
            elif hi == lo:
                point[name] = 0.0
            else:
                point[name] = (math.log(value / lo) / math.log(hi / lo) if kind == "loguniform"
                               else (value - lo) / (hi - lo))
        return point

    def resolve(self, sample: dict[str, Any], base: TrainConfig) -> dict[str, Any]:
        """A trial's ``kgops train`` options from Tune's sample of :meth:`param_space`."""
        values = {n: sample[n] for n in self.domains if "by" not in self.domains[n]}
        for name, domain in self.domains.items():
            if "by" in domain:
                kind = next(k for k in KINDS if k in domain)
                key = values.get(domain["by"], getattr(base, domain["by"]))
                lo, hi = domain[kind][key]
                u = float(sample[name])
                value = (lo * math.exp(u * math.log(hi / lo)) if kind == "loguniform"
                         else lo + u * (hi - lo))
                values[name] = float(f"{value:.12g}")   # the base point maps back to 0.1 exactly
        for name, value in list(values.items()):
            if TrainConfig.option(name).type is int:
                values[name] = int(round(value))
        residual = values.get("residual", base.residual)
        if residual and "embedding_dim" in values and "out_dim" not in values:
            values["out_dim"] = values["embedding_dim"]
        return values
