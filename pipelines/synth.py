"""Synthetic Criteo-like click data from a planted model, so the best achievable AUC is known.

Columns: ``label`` (int8, 0/1), ``I1..I13`` (float32 counts, heavy-tailed, with nulls),
``C1..C26`` (8-hex-digit strings, Zipf-distributed ids over cardinalities from 3 to
1.5M, with nulls). The label is drawn from ``sigmoid(logit)`` where the logit adds
per-column effects (numeric through their log scale, categorical through the head of
each id distribution), a numeric×numeric and a categorical×categorical interaction.
The logit scale is calibrated so the Bayes-optimal AUC is about 0.80 and the bias so
about a quarter of the rows are clicks, like the public Criteo sample.

Generation is vectorized and streaming: rows are produced in fixed chunks seeded by
``(seed, day, chunk)``, so memory does not grow with the row count and any day can be
regenerated (or appended later) identically. The optimum AUC is measured on the very
rows written, from a fine histogram of the true click probability, and stored in the
manifest's ``metadata["synth"]``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from shardflow.storage import DatasetWriter, Manifest, redact_url, write_parquet_shards

__all__ = ["SynthConfig", "PlantedModel", "synthesize", "SCHEMA", "NUMERIC", "CATEGORICAL", "LABEL"]

LABEL = "label"
NUMERIC = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
SCHEMA = pa.schema(
    [pa.field(LABEL, pa.int8(), nullable=False)]
    + [pa.field(n, pa.float32()) for n in NUMERIC]
    + [pa.field(c, pa.string()) for c in CATEGORICAL]
)
CHUNK_ROWS = 65536
# Cardinalities shaped like the public Criteo columns (a few tiny, several in the millions).
_CARDINALITY = [1460, 583, 1_500_000, 400_000, 305, 24, 12517, 633, 3, 93145, 5683, 1_200_000, 3194,
                27, 14992, 800_000, 10, 5652, 2173, 4, 1_000_000, 18, 15, 286181, 105, 142572]
_HEAD = 5000  # ids below this carry an effect; the long tail is noise a model cannot learn
_BINS = 1 << 14
_LOGIT_RANGE = 16.0
_TARGET_AUC = 0.80
_TARGET_CTR = 0.25


@dataclass(frozen=True)
class SynthConfig:
    """What ``shardflow data synth`` writes."""

    rows: int
    days: int = 1
    seed: int = 0
    start_date: str = "2026-01-01"
    rows_per_shard: int = 500_000

    def __post_init__(self) -> None:
        for name in ("rows", "days", "rows_per_shard"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Invalid value for `{name}`: {value!r}. Expected a positive integer.")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"Invalid value for `seed`: {self.seed!r}. Expected a non-negative integer.")
        try:
            _dt.date.fromisoformat(self.start_date)
        except (TypeError, ValueError) as e:
            raise ValueError(f"Invalid value for `start_date`: {self.start_date!r}. Expected YYYY-MM-DD.") from e

    def day_rows(self) -> list[tuple[str, int]]:
        """``[(YYYY-MM-DD, rows)]``: rows spread evenly over the days."""
        start = _dt.date.fromisoformat(self.start_date)
        base, extra = divmod(self.rows, self.days)
        return [((start + _dt.timedelta(days=d)).isoformat(), base + (d < extra)) for d in range(self.days)]


@dataclass
class PlantedModel:
    """The generating model; fixed by the seed alone so appended days match earlier ones."""

    seed: int
    num_mu: np.ndarray = field(repr=False)
    num_sigma: np.ndarray = field(repr=False)
    num_missing: np.ndarray = field(repr=False)
    num_weight: np.ndarray = field(repr=False)
    num_missing_effect: np.ndarray = field(repr=False)
    cat_exponent: np.ndarray = field(repr=False)
    cat_missing: np.ndarray = field(repr=False)
    cat_multiplier: np.ndarray = field(repr=False)
    cat_offset: np.ndarray = field(repr=False)
    cat_effects: list[np.ndarray] = field(repr=False)
    cross_table: np.ndarray = field(repr=False)  # C9 x C20 (both tiny)
    num_cross: float = 0.0  # weight of z(I1) * z(I2)
    scale: float = 1.0
    bias: float = 0.0

    @classmethod
    def from_seed(cls, seed: int) -> PlantedModel:
        rng = np.random.default_rng([seed, 0xC11C])
        informative = rng.random(len(CATEGORICAL)) < 0.6
        effects = []
        for k, inf in zip(_CARDINALITY, informative):
            head = min(k, _HEAD)
            table = np.zeros(head + 1, np.float64)  # last slot: the tail and nulls
            table[:head] = rng.normal(0.0, rng.uniform(0.35, 0.7) if inf else 0.05, head)
            effects.append(table)
        model = cls(
            seed=seed,
            num_mu=rng.uniform(0.3, 3.0, len(NUMERIC)),
            num_sigma=rng.uniform(0.8, 1.8, len(NUMERIC)),
            num_missing=rng.choice([0.0, 0.02, 0.1, 0.2, 0.45], len(NUMERIC)),
            num_weight=rng.normal(0.0, 0.35, len(NUMERIC)),
            num_missing_effect=rng.normal(0.0, 0.3, len(NUMERIC)),
            cat_exponent=rng.uniform(1.05, 1.4, len(CATEGORICAL)),
            cat_missing=rng.choice([0.0, 0.0, 0.03, 0.2, 0.4], len(CATEGORICAL)),
            cat_multiplier=(rng.integers(0, 1 << 31, len(CATEGORICAL), dtype=np.uint32) * 2 + 1),  # odd: bijective
            cat_offset=rng.integers(0, 1 << 32, len(CATEGORICAL), dtype=np.uint32),
            cat_effects=effects,
            cross_table=rng.normal(0.0, 0.5, (3, 4)),
            num_cross=0.35,
        )
        model._calibrate()
        return model

    def __post_init__(self) -> None:
        for name in ("num_mu", "num_sigma", "num_missing", "num_weight", "num_missing_effect", "cat_exponent",
                     "cat_missing"):
            setattr(self, name, np.asarray(getattr(self, name), np.float32))  # keep the per-row math in float32
        # All effect tables in one flat array (+ a zero slot for nulls) so lookup is one gather.
        self._head = np.array([len(t) - 1 for t in self.cat_effects], np.int32)
        self._effect_offset = np.cumsum([0] + [len(t) for t in self.cat_effects[:-1]]).astype(np.int32)
        self._effects = np.concatenate(self.cat_effects + [np.zeros(1)])

    def _calibrate(self) -> None:
        """Choose scale and bias for the target optimum AUC and click rate."""
        raw = self.columns(np.random.default_rng([self.seed, 0xCA1B]), 200_000)[1]
        lo, hi = 0.05, 10.0
        for _ in range(40):
            self.scale = (lo + hi) / 2
            auc = _soft_auc(self.scale * (raw - raw.mean()))
            lo, hi = (self.scale, hi) if auc < _TARGET_AUC else (lo, self.scale)
        lo, hi = -10.0, 10.0
        centred = self.scale * (raw - raw.mean())
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _sigmoid(centred + mid).mean() < _TARGET_CTR else (lo, mid)
        self.bias = mid - self.scale * raw.mean()

    def columns(self, rng: np.random.Generator, n: int) -> tuple[list[pa.Array], np.ndarray]:
        """Generate ``n`` rows of features and their unscaled logit (before scale and bias).

        All columns of a kind are computed at once as 2-D float32 arrays: the cost is a
        few dozen array operations per chunk, whatever the number of columns.
        """
        z = rng.standard_normal((len(NUMERIC), n), dtype=np.float32)
        num_missing = rng.random((len(NUMERIC), n), dtype=np.float32) < self.num_missing[:, None]
        values = np.floor(np.exp(self.num_mu[:, None] + self.num_sigma[:, None] * z)) - 1.0
        contrib = np.where(num_missing, self.num_missing_effect[:, None], self.num_weight[:, None] * z)
        logit = contrib.sum(axis=0, dtype=np.float64)
        logit += self.num_cross * z[0] * z[1] * ~num_missing[0]

        u = rng.random((len(CATEGORICAL), n), dtype=np.float32)
        cat_missing = rng.random((len(CATEGORICAL), n), dtype=np.float32) < self.cat_missing[:, None]
        cardinality = np.asarray(_CARDINALITY, np.int32)[:, None]
        one_minus_a = (1.0 - self.cat_exponent)[:, None]
        span = (1.0 - (cardinality + 1.0) ** one_minus_a).astype(np.float32)
        x = (1.0 - u * span) ** (np.float32(1.0) / one_minus_a)  # truncated Zipf by inverse CDF
        ids = np.minimum(x.astype(np.int32) - 1, cardinality - 1)
        effect_idx = np.minimum(ids, self._head[:, None]) + self._effect_offset[:, None]
        effect_idx[cat_missing] = len(self._effects) - 1  # the shared zero slot
        logit += self._effects[effect_idx].sum(axis=0)
        c9, c20 = ids[8], ids[19]
        logit += np.where(cat_missing[8] | cat_missing[19], 0.0, self.cross_table[c9 % 3, c20 % 4])
        codes = ids.astype(np.uint32) * self.cat_multiplier[:, None] + self.cat_offset[:, None]  # wraps mod 2**32
        text = _hex_bytes(codes)
        arrays: list[pa.Array] = [
            pa.Array.from_buffers(pa.float32(), n, [_validity(num_missing[j]), pa.py_buffer(values[j].astype(np.float32))],
                                  int(num_missing[j].sum()))
            for j in range(len(NUMERIC))
        ]
        offsets = pa.py_buffer(np.arange(0, 8 * n + 1, 8, dtype=np.int32))
        arrays += [
            pa.StringArray.from_buffers(n, offsets, pa.py_buffer(text[j]), _validity(cat_missing[j]),
                                        int(cat_missing[j].sum()))
            for j in range(len(CATEGORICAL))
        ]
        return arrays, logit

    def batch(self, rng: np.random.Generator, n: int) -> tuple[pa.RecordBatch, np.ndarray]:
        """A record batch of ``n`` rows and the true logit of each row."""
        arrays, raw = self.columns(rng, n)
        logit = self.scale * raw + self.bias
        label = (rng.random(n) < _sigmoid(logit)).astype(np.int8)
        return pa.RecordBatch.from_arrays([pa.array(label, pa.int8())] + arrays, schema=SCHEMA), logit

    def describe(self) -> dict[str, Any]:
        return {"seed": self.seed, "scale": round(float(self.scale), 6), "bias": round(float(self.bias), 6),
                "cardinalities": dict(zip(CATEGORICAL, _CARDINALITY)),
                "interactions": ["I1*I2", "C9xC20"], "informative_head_ids": _HEAD}


def _pair_table() -> np.ndarray:
    hexdigits = np.frombuffer(b"0123456789abcdef", np.uint8).astype(np.uint32)
    pair = np.arange(1 << 16, dtype=np.uint32)
    lo, hi = pair & 0xFF, pair >> 8
    return (hexdigits[lo >> 4] | hexdigits[lo & 15] << 8 | hexdigits[hi >> 4] << 16 | hexdigits[hi & 15] << 24)


_HEX_OF_PAIR = _pair_table()  # two bytes -> their four hex digits, packed as one uint32


def _hex_bytes(codes: np.ndarray) -> np.ndarray:
    """8 hex digits per 32-bit code (of its bytes in memory order) as a ``(..., 8 * n)`` uint8 array.

    One table gather per 16 bits, no Python objects: a fixed bijection of codes to text.
    """
    pairs = np.ascontiguousarray(codes, dtype=np.uint32).view(np.uint16)
    return _HEX_OF_PAIR[pairs].view(np.uint8)


def _validity(missing: np.ndarray) -> pa.Buffer | None:
    """Arrow validity bitmap (1 = present), or None when nothing is missing."""
    return pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _soft_auc(logit: np.ndarray) -> float:
    hist = _ProbabilityHistogram()
    hist.add(logit, None)
    return hist.auc()[0]


class _ProbabilityHistogram:
    """Streaming AUC of the true probability, from positives/negatives per logit bin."""

    def __init__(self) -> None:
        self.soft_pos = np.zeros(_BINS)
        self.soft_neg = np.zeros(_BINS)
        self.pos = np.zeros(_BINS)
        self.neg = np.zeros(_BINS)

    def add(self, logit: np.ndarray, label: np.ndarray | None) -> None:
        p = _sigmoid(logit)
        idx = np.clip(((logit + _LOGIT_RANGE) / (2 * _LOGIT_RANGE) * _BINS).astype(np.int64), 0, _BINS - 1)
        self.soft_pos += np.bincount(idx, weights=p, minlength=_BINS)
        self.soft_neg += np.bincount(idx, weights=1.0 - p, minlength=_BINS)
        if label is not None:
            self.pos += np.bincount(idx, weights=label, minlength=_BINS)
            self.neg += np.bincount(idx, weights=1 - label, minlength=_BINS)

    @staticmethod
    def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
        below = np.cumsum(neg) - neg
        total = pos.sum() * neg.sum()
        return float((pos * (below + 0.5 * neg)).sum() / total) if total else float("nan")

    def auc(self) -> tuple[float, float]:
        """(expected AUC of the optimal scorer, its AUC on the labels actually drawn)."""
        return self._auc(self.soft_pos, self.soft_neg), self._auc(self.pos, self.neg)


def _day_batches(model: PlantedModel, seed: int, date: str, rows: int, hist: _ProbabilityHistogram,
                 on_rows: Callable[[int], None] | None) -> Iterator[pa.RecordBatch]:
    ordinal = _dt.date.fromisoformat(date).toordinal()
    for chunk, start in enumerate(range(0, rows, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, rows - start)
        batch, logit = model.batch(np.random.default_rng([seed, ordinal, chunk]), n)
        hist.add(logit, batch.column(0).to_numpy().astype(np.float64))
        if on_rows:
            on_rows(n)
        yield batch


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else round(value, 5)


def _summary(days: dict[str, dict[str, Any]], model: PlantedModel) -> dict[str, Any]:
    """Dataset-level figures from per-day ones (days share one model, so the optimum is their weighted mean)."""
    def mean(key: str) -> float | None:
        known = [d for d in days.values() if d[key] is not None]  # AUC is undefined for a day of one class
        weight = sum(d["rows"] for d in known)
        return round(sum(d[key] * d["rows"] for d in known) / weight, 5) if weight else None

    return {"optimal_auc": mean("optimal_auc"), "optimal_auc_realized": mean("optimal_auc_realized"),
            "click_rate": mean("click_rate"), "label": LABEL, "numeric": NUMERIC, "categorical": CATEGORICAL,
            "days": dict(sorted(days.items())), "model": model.describe()}


def synthesize(
    url: str,
    config: SynthConfig,
    *,
    append: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> Manifest:
    """Write a synthetic click dataset (one Parquet partition per day) and commit it.

    Args:
        url: Dataset URL.
        config: Rows, days, seed, first date, shard size.
        append: Add the days to an existing dataset instead of replacing it (same seed:
            same planted model; a different seed is refused). Days already present are
            kept as they are; asking for one with another row count is refused.
        storage_options: Filesystem options for ``url``.
        on_rows: Progress callback receiving row counts.

    Returns:
        The committed manifest; ``metadata["synth"]["optimal_auc"]`` is the best AUC a
        model can expect on this data, with per-day figures under ``["days"]``.
    """
    model = PlantedModel.from_seed(config.seed)
    with DatasetWriter(url, name="shardflow data synth", params=asdict(config),
                       mode="append" if append else "overwrite", storage_options=storage_options) as writer:
        base = writer.base_manifest() if append else None
        previous = base.metadata.get("synth") if base else None
        days: dict[str, dict[str, Any]] = dict(previous["days"]) if previous else {}
        if previous and previous["model"]["seed"] != config.seed:
            raise ValueError(f"Invalid value for `seed`: {config.seed}. The dataset at {redact_url(url)} was "
                             f"made with seed {previous['model']['seed']}; appended days must use the same model.")
        for date, rows in config.day_rows():
            if date in days:  # already there: the same seed and rows would give the same data
                if days[date]["rows"] != rows:
                    raise ValueError(f"Invalid value for `start_date`: {config.start_date}. Day {date} is already in "
                                     f"{redact_url(url)} with {days[date]['rows']} rows, not {rows}.")
                if on_rows:
                    on_rows(rows)
                continue
            hist = _ProbabilityHistogram()
            write_parquet_shards(writer, _day_batches(model, config.seed, date, rows, hist, on_rows), split="all",
                                 partition={"day": date}, rows_per_shard=config.rows_per_shard)
            expected, realized = hist.auc()
            days[date] = {"rows": rows, "optimal_auc": _finite(expected), "optimal_auc_realized": _finite(realized),
                          "click_rate": round(float(hist.pos.sum()) / rows, 5)}
        return writer.commit(schema=SCHEMA, metadata={"synth": _summary(days, model)})
