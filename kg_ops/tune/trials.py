"""One Ray Tune trial = one ``kgops train`` run, and the driver-side record of every trial.

Ray 2.60 runs Ray Train V2, whose ``TorchTrainer`` is no longer a Tune ``Trainable``: passing
it to ``Tuner`` is the V1 API. V2's documented way is a Tune function trainable that calls
``TorchTrainer.fit()`` itself, with ``TuneReportCallback`` forwarding each report of the
training workers to the trial. :func:`run_trial` does exactly that through
:func:`kg_ops.train.cli.train`, so a trial is the same train stage as ``kgops train``
(checkpoints, early stopping, manifest) writing a normal train output under
``{out}/trials/{trial_id}``; ASHA sees the per-epoch report of the training loop.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from kg_ops.config import TrainConfig
from kg_ops.store import join

log = logging.getLogger("kg_ops.tune")

METRIC = "best_valid_mrr"      # best filtered (sampled) validation MRR up to this epoch


def trial_out(out: str, trial_id: str) -> str:
    return join(out, "trials", trial_id)


def trial_recipe(base: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    """The full, explicit recipe of a trial: the base with its preset and per-model defaults
    resolved, then the sampled options on top (a preset fills options "left at their
    default", and would take a sampled value that equals the default for one)."""
    return base.replace(**options).resolved().replace(preset=None, **options)


def trial_config(base: TrainConfig, space, sample: dict[str, Any], out: str,
                 trial_id: str) -> TrainConfig:
    options = space.resolve(sample, base.resolved())
    return trial_recipe(base, options).replace(out=trial_out(out, trial_id))


def run_trial(sample: dict[str, Any], *, base: TrainConfig, space, out: str) -> None:
    """The Tune function trainable (``tune.with_parameters`` binds the keywords)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from kg_ops.train.cli import train

    config = trial_config(base, space, sample, out, tune.get_context().get_trial_id())
    train(config, callbacks=[TuneReportCallback()], announce=False)


@dataclasses.dataclass
class TrialRecord:
    trial_id: str
    sample: dict[str, Any]
    options: dict[str, Any]
    out: str
    history: list[dict] = dataclasses.field(default_factory=list)
    status: str = "running"
    stopped_by: str | None = None
    error: str | None = None

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def best_valid_mrr(self) -> float | None:
        values = [h["valid_mrr"] for h in self.history if not math.isnan(h["valid_mrr"])]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "status": self.status, "options": self.options,
                "epochs": self.epochs, "best_valid_mrr": self.best_valid_mrr,
                "best_epoch": (max(self.history, key=lambda h: h["valid_mrr"])["epoch"]
                               if self.best_valid_mrr is not None else None),
                "stopped_by": self.stopped_by, "error": self.error, "out": self.out,
                "history": self.history}


def recorder_and_scheduler(base: TrainConfig, space, out: str, grace: int, reduction: int):
    """A Tune callback that records and logs every trial, and the ASHA scheduler whose early
    stops it tells apart from the time budget's."""
    recorder = _recorder(base, space, out)
    return recorder, _recording_asha(base, recorder, grace, reduction)


def _recorder(base: TrainConfig, space, out: str):
    """A Tune callback keeping a :class:`TrialRecord` per trial (``.trials``) and logging
    each trial's start, epochs and end."""
    from ray.tune import Callback

    class Recorder(Callback):
        def __init__(self) -> None:
            self.trials: dict[str, TrialRecord] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            options = space.resolve(trial.config, base.resolved())
            self.trials[trial.trial_id] = TrialRecord(trial.trial_id, dict(trial.config),
                                                      options, trial_out(out, trial.trial_id))
            log.info("tune: trial %s started (%d so far): %s", trial.trial_id,
                     len(self.trials), _short(options))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            rec = self.trials[trial.trial_id]
            mrr = float(result.get("valid_mrr_sampled", float("nan")))
            epoch = int(result.get("epoch", rec.epochs + 1))
            # a worker restarted by Ray Train repeats the epochs after its checkpoint
            rec.history = [h for h in rec.history if h["epoch"] < epoch]
            rec.history.append({"epoch": epoch, "valid_mrr": mrr, "loss": result.get("loss"),
                                "epoch_s": result.get("epoch_s")})
            done = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
            log.info("tune: trial %s epoch %d/%d: valid MRR (filtered) %.4f, best "
                     "%.4f; %d trial(s) ended", trial.trial_id, rec.epochs, base.epochs, mrr,
                     rec.best_valid_mrr or float("nan"), done)

        def on_trial_complete(self, iteration, trials, trial, **info):
            rec = self.trials.get(trial.trial_id)
            if rec is not None:
                rec.status = "ended"
                log.info("tune: trial %s ended after %d epoch(s), best valid MRR %s%s",
                         trial.trial_id, rec.epochs, _fmt(rec.best_valid_mrr),
                         f" ({rec.stopped_by})" if rec.stopped_by else "")

        def on_trial_error(self, iteration, trials, trial, **info):
            rec = self.trials.get(trial.trial_id)
            if rec is not None:
                rec.status = "error"
                rec.error = _error_line(trial)
                log.warning("tune: trial %s failed: %s", trial.trial_id, rec.error)

    return Recorder()


def _recording_asha(base: TrainConfig, recorder, grace: int, reduction: int):
    """ASHA that notes its early stops in the recorder's trial records."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            action = super().on_trial_result(tune_controller, trial, result)
            # A trial's last report (its last epoch, or early stopping on patience) ends it by
            # itself once its train stage has written model and manifest: a stop now would
            # kill it half-way through writing them.
            if result.get("training_iteration", 0) >= base.epochs or result.get(
                    "stopped_early"):
                return TrialScheduler.CONTINUE
            rec = recorder.trials.get(trial.trial_id)
            if action == TrialScheduler.STOP and rec is not None:
                rec.stopped_by = f"ASHA at epoch {result.get('training_iteration')}"
            return action

    return RecordingASHA(time_attr="training_iteration", max_t=base.epochs, grace_period=grace,
                         reduction_factor=reduction, stop_last_trials=False)


def _error_line(trial) -> str:
    """The trial's own error in one line, from the files Tune writes beside the driver when
    the trial fails (its storage copy is synced later)."""
    from ray import cloudpickle

    from kg_ops.errors import root_cause

    err = None
    try:
        with open(trial.pickled_error_file, "rb") as fh:
            err = cloudpickle.load(fh)
    except Exception:  # noqa: BLE001 -- no or unreadable pickle: fall back to the text file
        err = None
    if isinstance(err, BaseException):
        cause = root_cause(err)
        text = str(cause).strip().splitlines()
        return f"{type(cause).__name__}: {text[0] if text else ''}"[:500]
    try:
        with open(trial.error_file) as fh:
            text = fh.read().strip().splitlines()
    except (OSError, TypeError):
        text = []
    return (text[-1] if text else "unknown error")[:500]


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _short(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in options.items())
