"""The direction model: XGBoost training, holdout metrics, and scoring (no I/O).

Training is deterministic: ``binary:logistic`` with the ``hist`` tree method, a fixed
seed and thread count, rows in time order — same data and seed, byte-identical UBJ
artifact.  A model's version is a content hash (no timestamps): the sha256 of the
artifact plus the name, interval, horizon, feature set and feature list, 12 hex digits.

``Model.load`` refuses (``ModelMismatch``) an artifact whose features this code does
not produce under the same definitions (``features.FEATURE_SET``), or whose metadata
does not describe the artifact; the predict agent then keeps its previous model.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import xgboost as xgb

from .features import FEATURE_NAMES, FEATURE_SET, Dataset, Split, walk_forward_split
from .indicators import IndicatorSpec
from .intervals import interval_seconds

OBJECTIVE = "binary:logistic"
ARTIFACT_FORMAT = "ubj"
_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps] in the log-loss


class ModelMismatch(ValueError):
    """A model this pipeline cannot score with (features, definitions or artifact)."""


@dataclass(frozen=True)
class TrainParams:
    rounds: int = 200
    max_depth: int = 4
    eta: float = 0.05
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 5.0
    seed: int = 42
    threads: int = 1

    def xgb_params(self) -> dict:
        return {
            "objective": OBJECTIVE,
            "tree_method": "hist",
            "eval_metric": "logloss",
            "max_depth": self.max_depth,
            "eta": self.eta,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "min_child_weight": self.min_child_weight,
            "seed": self.seed,
            "nthread": self.threads,
        }


# --- metrics -----------------------------------------------------------------------------
def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """ROC AUC by ranks (ties share their average rank); None when y has one class."""
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(p, kind="stable")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    i = 0
    while i < len(p):
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def scores(y: np.ndarray, p: np.ndarray) -> dict:
    q = np.clip(p, _EPS, 1.0 - _EPS)
    return {
        "auc": auc(y, p),
        "accuracy": float(np.mean((p >= 0.5) == (y == 1.0))),
        "log_loss": float(-np.mean(y * np.log(q) + (1.0 - y) * np.log(1.0 - q))),
    }


# --- training ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    artifact: bytes
    metadata: dict
    holdout_p: np.ndarray = field(repr=False)

    @property
    def version(self) -> str:
        return self.metadata["version"]


def model_version(artifact: bytes, name: str, interval: str, horizon: int, features: Sequence[str]) -> str:
    h = hashlib.sha256(artifact)
    h.update(json.dumps([name, interval, horizon, FEATURE_SET, list(features)]).encode())
    return h.hexdigest()[:12]


def _iso(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us // 1_000_000)) + "Z"


def train(
    ds: Dataset,
    features: Sequence[str],
    holdout_fraction: float,
    params: TrainParams,
    name: str,
    source: str = "",
    indicators: Sequence[IndicatorSpec] = (),
) -> Trained:
    """Walk-forward split, fit, holdout report and metadata (see ``features.walk_forward_split``).

    ``indicators``: the user indicators ``ds`` was built with; those the features use are
    recorded (class, outputs, source sha256), so the predict stage scores with the same."""
    unknown = [f for f in features if f not in ds.names]
    if unknown or not features or len(set(features)) != len(features):
        raise ValueError(f"bad feature list: unknown {unknown}" if unknown else "bad feature list: empty or repeated")
    cols = [ds.names.index(f) for f in features]
    X = ds.X[:, cols]
    complete = ~np.isnan(X).any(axis=1)
    labelled = ~np.isnan(ds.y)
    usable = complete & labelled
    split: Split = walk_forward_split(ds.ts, ds.label_end, usable, holdout_fraction)
    if len(split.train) == 0:
        raise ValueError("no training rows left before the holdout (too little history)")
    y_train, y_hold = ds.y[split.train], ds.y[split.holdout]
    if y_train.min() == y_train.max():
        raise ValueError("the training rows have one class only: nothing to learn")

    dtrain = xgb.DMatrix(X[split.train], label=y_train, feature_names=list(features), nthread=params.threads)
    booster = xgb.train(params.xgb_params(), dtrain, num_boost_round=params.rounds)
    artifact = bytes(booster.save_raw(raw_format=ARTIFACT_FORMAT))
    p_hold = booster.inplace_predict(X[split.holdout])
    base_rate = float(y_train.mean())
    gain = cast(
        "dict[str, float]", booster.get_score(importance_type="gain")
    )  # floats for a tree booster (lists only for gblinear)
    importance = sorted(((f, gain.get(f, 0.0)) for f in features), key=lambda kv: (-kv[1], kv[0]))
    total_gain = sum(g for _, g in importance) or 1.0
    version = model_version(artifact, name, ds.interval, ds.horizon, features)
    ts_train, ts_hold = ds.ts[split.train], ds.ts[split.holdout]
    metadata = {
        "name": name,
        "version": version,
        "interval": ds.interval,
        "horizon": ds.horizon,
        "objective": OBJECTIVE,
        "feature_set": FEATURE_SET,
        "features": list(features),
        "indicators": [spec.record() for spec in indicators if any(o in features for o in spec.cls.output_names())],
        "params": params.xgb_params() | {"rounds": params.rounds},
        "window": {
            "train_from": _iso(int(ts_train.min())),
            "train_to": _iso(int(ts_train.max())),
            "holdout_from": _iso(int(ts_hold.min())),
            "holdout_to": _iso(int(ts_hold.max())),
            "last_train_label_end": _iso(int(ds.label_end[split.train].max())),
        },
        "rows": {
            "bars": len(ds.ts),
            "missing_features": int((~complete).sum()),
            "unlabelled": int((complete & ~labelled).sum()),
            "purged": split.purged,
            "train": len(split.train),
            "holdout": len(split.holdout),
            "symbols": len(set(ds.symbols)),
        },
        "metrics": {
            "holdout": scores(y_hold, p_hold),
            "baseline": scores(y_hold, np.full(len(y_hold), base_rate)),
            "train_up_rate": base_rate,
            "holdout_up_rate": float(y_hold.mean()),
        },
        "importance": [{"feature": f, "gain_share": g / total_gain} for f, g in importance],
        "data": {"source": source, "fingerprint": ds.fingerprint},
        "libraries": {"xgboost": xgb.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "artifact": {"format": ARTIFACT_FORMAT, "bytes": len(artifact), "sha256": hashlib.sha256(artifact).hexdigest()},
    }
    return Trained(artifact, metadata, p_hold)


# --- scoring -------------------------------------------------------------------------------
def _num(x) -> float:
    return np.nan if x is None else float(x)


def _check_indicators(who: str, recorded, configured: Sequence[IndicatorSpec]) -> tuple[str, ...]:
    """The outputs of the user indicators the model records; ModelMismatch unless each is
    configured, from the same source."""
    if not isinstance(recorded, list):
        raise ModelMismatch(f"{who} refused: its indicators are not a list")
    by_path = {spec.path: spec for spec in configured}
    outputs: list[str] = []
    for rec in recorded:
        path = rec.get("class") if isinstance(rec, dict) else None
        spec = by_path.get(path)  # type: ignore[arg-type]  # None is no key: refused below
        if spec is None:
            raise ModelMismatch(
                f"{who} refused: trained on user indicator {path}, which INDICATORS does not name "
                f"(it names {', '.join(by_path) or 'none'})"
            )
        if rec.get("source_sha256") != spec.source_sha256:
            raise ModelMismatch(
                f"{who} refused: user indicator {path} changed since training "
                f"(source sha256 {str(rec.get('source_sha256'))[:12]}, now {spec.source_sha256[:12]}): retrain"
            )
        outputs.extend(spec.cls.output_names())
    return tuple(outputs)


class Model:
    """A loaded, checked model: scores feature vectors aligned with ``FEATURE_NAMES``, its
    user indicator features taken from each IndicatorSet's ``extra``."""

    def __init__(self, metadata: Mapping, booster: xgb.Booster):
        self.metadata = dict(metadata)
        self.name: str = metadata["name"]
        self.version: str = metadata["version"]
        self.interval: str = metadata["interval"]
        self.horizon: int = metadata["horizon"]
        self.features: tuple[str, ...] = tuple(metadata["features"])
        self.extra = tuple(f for f in self.features if f not in FEATURE_NAMES)  # user indicator outputs
        layout = FEATURE_NAMES + self.extra  # a row: the FeatureState vector, then the extras
        self.columns = np.array([layout.index(f) for f in self.features])
        self.booster = booster

    @classmethod
    def load(cls, artifact: bytes, metadata: Mapping, indicators: Sequence[IndicatorSpec] = ()) -> Model:
        """The model, or ``ModelMismatch`` saying why this pipeline cannot use it;
        ``indicators`` are this pipeline's user indicators (``INDICATORS``): each one the
        model was trained on must be configured, from the same source."""
        who = f"model {metadata.get('name', '?')} {metadata.get('version', '?')}"
        features = metadata.get("features")
        if metadata.get("feature_set") != FEATURE_SET:
            raise ModelMismatch(
                f"{who} refused: its features follow definitions "
                f"{metadata.get('feature_set')!r}, this pipeline produces {FEATURE_SET!r}"
            )
        if not isinstance(features, list) or not features or len(set(features)) != len(features):
            raise ModelMismatch(f"{who} refused: its feature list is empty, repeated or not a list")
        produced = FEATURE_NAMES + _check_indicators(who, metadata.get("indicators", []), indicators)
        unknown = [f for f in features if f not in produced]
        if unknown:
            raise ModelMismatch(
                f"{who} refused: the pipeline does not produce feature(s) "
                f"{', '.join(map(str, unknown))} (it produces {', '.join(produced)}; "
                "user indicators come from INDICATORS)"
            )
        if metadata.get("objective") != OBJECTIVE:
            raise ModelMismatch(f"{who} refused: objective {metadata.get('objective')!r}, expected {OBJECTIVE}")
        try:
            interval_seconds(metadata.get("interval"))
        except ValueError as e:
            raise ModelMismatch(f"{who} refused: {e}") from None
        if not (isinstance(metadata.get("horizon"), int) and metadata["horizon"] >= 1):
            raise ModelMismatch(f"{who} refused: horizon {metadata.get('horizon')!r} is not a positive int")
        digest = metadata.get("artifact", {}).get("sha256")
        if digest != hashlib.sha256(artifact).hexdigest():
            raise ModelMismatch(f"{who} refused: the artifact does not match its metadata's sha256")
        try:
            booster = xgb.Booster(params={"nthread": 1}, model_file=bytearray(artifact))
        except xgb.core.XGBoostError as e:
            raise ModelMismatch(f"{who} refused: unreadable artifact ({str(e).splitlines()[0]})") from None
        if booster.feature_names != features:
            raise ModelMismatch(
                f"{who} refused: the artifact's features {booster.feature_names} differ from its metadata's {features}"
            )
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        if objective != OBJECTIVE:
            raise ModelMismatch(f"{who} refused: the artifact's objective is {objective}, expected {OBJECTIVE}")
        return cls(metadata, booster)

    def score(self, X: np.ndarray) -> np.ndarray:
        """p_up of each row of ``X`` (columns = this model's features, complete rows)."""
        return self.booster.inplace_predict(X)

    def predictions(self, items: Sequence[tuple[Mapping, Sequence[float]]]) -> tuple[list[dict], int, float]:
        """Prediction events for (IndicatorSet, feature vector) pairs of this model's interval.

        Returns (events, rows skipped for missing features, seconds spent scoring).  All
        complete rows are scored in one call: a batch when several sets are waiting, the
        single-row path (a 1-row call) otherwise."""
        if not items:
            return [], 0, 0.0
        started = time.perf_counter()
        if self.extra:  # a missing output (not in the set's extra) is a missing feature
            extra = self.extra
            rows_in = [[*vec, *(_num(ind["extra"].get(k)) for k in extra)] for ind, vec in items]
            X = np.asarray(rows_in)[:, self.columns]
        else:
            X = np.asarray([vec for _, vec in items])[:, self.columns]
        complete = ~np.isnan(X).any(axis=1)
        n_ok = int(complete.sum())
        if n_ok == 0:
            return [], len(items), time.perf_counter() - started
        X = X[complete] if n_ok < len(items) else X
        p = self.score(X).tolist()
        rows = X.tolist()
        features = self.features
        out = []
        k = 0
        for (ind, _), ok in zip(items, complete.tolist()):
            if not ok:
                continue
            out.append(
                {
                    "event_id": f"{ind['event_id']}:{self.name}:{self.version}",
                    "symbol": ind["symbol"],
                    "interval": ind["interval"],
                    "ts": ind["ts"],
                    "model_name": self.name,
                    "model_version": self.version,
                    "p_up": p[k],
                    "horizon": self.horizon,
                    "features": dict(zip(features, rows[k])),
                    "close": ind["close"],
                    "volatility_20": ind["volatility_20"],
                }
            )
            k += 1
        return out, len(items) - n_ok, time.perf_counter() - started
