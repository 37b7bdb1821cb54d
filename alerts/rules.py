"""Alert rules: the schema every rule is validated against at load, and their windowed evaluation (pure).

A rule (JSON or YAML, or the ``definition`` column of ``alert_rules``)::

    {"id": "neg-entity-burst", "name": "Negative burst on an entity", "channel": "news",
     "filter": {"topics": ["Stock Movement"], "entities": ["$ACME"], "sources": [], "sentiments": []},
     "window": "15m", "hop": "5m", "metric": "negative_share", "group_by": ["entity"],
     "threshold": 0.6, "min_docs": 5, "severity": "critical", "silence": "1h",
     "webhooks": ["https://hooks.example.com/riskstream"]}

Metrics: ``count`` (documents in the window), ``negative_share`` (share with sentiment ``negative``),
``mean_risk`` (mean ``risk_score``). A window fires when ``doc_count >= min_docs`` and ``value >= threshold``; by
default it is evaluated when it closes (event time passed its end plus the allowed lateness, or the stream went
idle), with ``fire_early`` as soon as it crosses the threshold. A fired rule + group stays quiet for ``silence``.

:class:`Evaluator` is the stream job's brain without the stream: ``add(doc)`` and ``advance(now)`` return the
alerts to emit. Its state lives in a ``MutableMapping[str, dict]`` (a faust Table in production).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alerts.windows import WindowAgg, as_utc, is_silenced, parse_duration, window_starts
from schemas.records import Alert, AlertSeverity, Channel, ScoredDocument

Metric = Literal["count", "negative_share", "mean_risk"]
GroupField = Literal["entity", "topic", "source", "channel"]

_RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class RuleError(ValueError):
    """A rule that does not validate; the message names the rule and every problem."""


class RuleFilter(BaseModel):
    """Which documents a rule looks at. Empty lists mean "any"; values are matched exactly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topics: list[str] = Field(default_factory=list, description="topic.label in this list")
    entities: list[str] = Field(default_factory=list, description="an entity value in this list")
    sources: list[str] = Field(default_factory=list, description="source in this list")
    sentiments: list[str] = Field(default_factory=list, description="sentiment.label in this list")


class Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str = Field(min_length=1, max_length=200)
    enabled: bool = True
    channel: Channel | None = None
    filter: RuleFilter = Field(default_factory=RuleFilter)
    window: str = "15m"
    hop: str | None = Field(default=None, description="None: tumbling windows; else hopping with this step.")
    metric: Metric = "count"
    group_by: list[GroupField] = Field(default_factory=list)
    threshold: float
    min_docs: int = Field(default=1, ge=1)
    severity: AlertSeverity = "warning"
    silence: str = "1h"
    fire_early: bool = False
    webhooks: list[str] = Field(default_factory=list, max_length=10)

    @field_validator("id")
    @classmethod
    def _id_ok(cls, value: str) -> str:
        if not _RULE_ID.match(value):
            raise ValueError("id must be 1-100 characters of letters, digits, '.', '_' or '-'")
        return value

    @field_validator("window", "silence")
    @classmethod
    def _duration_ok(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("group_by")
    @classmethod
    def _unique_groups(cls, value: list[GroupField]) -> list[GroupField]:
        if len(set(value)) != len(value):
            raise ValueError("group_by lists a field twice")
        return value

    @field_validator("webhooks")
    @classmethod
    def _urls_ok(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"^https?://[^\s/]+", url):
                raise ValueError(f"webhook {url!r} is not an http(s) URL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.hop is not None:
            hop = parse_duration(self.hop)
            if hop > self.window_size or self.window_size % hop:
                raise ValueError("hop must divide the window (e.g. window 15m, hop 5m)")
        if self.metric != "count" and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold of a {self.metric} rule is a share in [0, 1]")
        if self.metric == "count" and self.threshold < 1:
            raise ValueError("threshold of a count rule must be at least 1")
        return self

    @property
    def window_size(self) -> timedelta:
        return parse_duration(self.window)

    @property
    def window_step(self) -> timedelta:
        return parse_duration(self.hop) if self.hop else self.window_size

    @property
    def silence_for(self) -> timedelta:
        return parse_duration(self.silence)

    # ---- matching ---------------------------------------------------------------------------------------------

    def matches(self, doc: ScoredDocument) -> bool:
        f = self.filter
        if self.channel is not None and doc.channel != self.channel:
            return False
        if f.topics and doc.topic.label not in f.topics:
            return False
        if f.sources and doc.source not in f.sources:
            return False
        if f.sentiments and doc.sentiment.label not in f.sentiments:
            return False
        return not (f.entities and not any(e.value in f.entities for e in doc.entities))

    def groups(self, doc: ScoredDocument) -> list[dict[str, str]]:
        """The groups a document counts in: one per entity when grouping by entity (none if it names none)."""
        out: list[dict[str, str]] = [{}]
        for name in self.group_by:
            if name == "entity":
                values = sorted({e.value for e in doc.entities})
                if self.filter.entities:
                    values = [v for v in values if v in self.filter.entities]
            elif name == "topic":
                values = [doc.topic.label]
            elif name == "source":
                values = [doc.source]
            else:
                values = [doc.channel]
            out = [{**g, name: v} for g in out for v in values]
        return out


def load_rule(data: Any, *, origin: str = "rule") -> Rule:
    """Validate one rule definition; :class:`RuleError` with every problem when it does not validate."""
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        rid = data.get("id", "?") if isinstance(data, dict) else "?"
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'rule'}: {e['msg']}" for e in exc.errors())
        raise RuleError(f"{origin} {rid!r} is invalid: {problems}") from exc


def load_rules_file(path: Path) -> list[Rule]:
    """Rules from a JSON or YAML file holding one rule object or a list of them."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RuleError(f"{path}: not valid YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RuleError(f"{path}: not valid JSON: {exc}") from exc
    items = data if isinstance(data, list) else [data]
    rules = [load_rule(item, origin=f"{path}") for item in items]
    ids = [r.id for r in rules]
    if len(ids) != len(set(ids)):
        raise RuleError(f"{path}: duplicate rule ids")
    return rules


# ---- metrics and alerts ---------------------------------------------------------------------------------------


def doc_risk(doc: ScoredDocument) -> float:
    """The document's risk: ``risk_score`` when the worker set it, else P(negative) from the sentiment head."""
    if doc.risk_score is not None:
        return doc.risk_score
    if doc.sentiment.probs and "negative" in doc.sentiment.probs:
        return float(doc.sentiment.probs["negative"])
    return doc.sentiment.score if doc.sentiment.label == "negative" else 0.0


def event_time(doc: ScoredDocument) -> datetime:
    return as_utc(doc.published_at or doc.ingested_at)


def metric_value(metric: Metric, agg: WindowAgg) -> float:
    if metric == "count":
        return float(agg.count)
    if agg.count == 0:
        return 0.0
    if metric == "negative_share":
        return agg.negative / agg.count
    return agg.risk_sum / agg.count


def group_key(group: dict[str, str]) -> str:
    return json.dumps(group, sort_keys=True, separators=(",", ":"))


def alert_id(rule_id: str, group: dict[str, str], window_start: datetime) -> str:
    """Deterministic: the same rule, group and window always give the same id (replays are idempotent)."""
    digest = hashlib.sha256(group_key(group).encode()).hexdigest()[:12]
    return f"{rule_id}-{digest}-{as_utc(window_start):%Y%m%dT%H%M%SZ}"


def _fmt(metric: Metric, value: float) -> str:
    return f"{int(value)}" if metric == "count" else f"{value:.2f}"


def make_alert(rule: Rule, group: dict[str, str], start: datetime, agg: WindowAgg, value: float) -> Alert:
    end = start + rule.window_size
    where = ", ".join(f"{k}={v}" for k, v in group.items()) or "all documents"
    return Alert(
        id=alert_id(rule.id, group, start),
        rule_id=rule.id,
        rule_name=rule.name,
        severity=rule.severity,
        channel=rule.channel,
        window_start=start,
        window_end=end,
        value=value,
        threshold=rule.threshold,
        doc_count=agg.count,
        group=group,
        sample_doc_ids=agg.samples[:20],
        message=(
            f"{rule.name}: {rule.metric} {_fmt(rule.metric, value)} >= {_fmt(rule.metric, rule.threshold)} "
            f"over {agg.count} documents ({where}) in {start:%Y-%m-%d %H:%M}-{end:%H:%M} UTC"
        ),
    )


def should_fire(rule: Rule, agg: WindowAgg) -> tuple[bool, float]:
    value = metric_value(rule.metric, agg)
    return agg.count >= rule.min_docs and value >= rule.threshold, value


# ---- the stateful evaluator -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    rule_id: str
    group: str
    start: datetime

    def encode(self) -> str:
        return f"w|{self.rule_id}|{int(self.start.timestamp())}|{self.group}"

    @classmethod
    def decode(cls, text: str) -> _Key:
        _, rule_id, ts, group = text.split("|", 3)
        return cls(rule_id, group, datetime.fromtimestamp(int(ts), tz=UTC))


def _silence_key(rule_id: str, group: str) -> str:
    return f"s|{rule_id}|{group}"


WATERMARK_KEY = "m|watermark"
WATERMARK_SAVE_EVERY = timedelta(minutes=1)


@dataclass
class EvalStats:
    documents: int = 0
    matched: int = 0
    late: int = 0
    fired: int = 0
    silenced: int = 0


class Evaluator:
    """Windowed rule evaluation over scored documents.

    ``state`` maps ``w|rule|start|group`` to an open window's aggregates and ``s|rule|group`` to the start of the
    window that last fired (for silences). ``lateness`` is how long after a window's end documents for it are
    still accepted; a window closes when the newest event time seen passes ``end + lateness`` or, for an idle
    stream, when the wall clock does (:meth:`advance`).

    The newest event time (the watermark) is saved in ``state`` too, at most once per minute of event time, so a
    restarted evaluator resumes from it (at most a minute behind: a little more lenient, never stricter) instead of
    treating a late document as new.
    """

    def __init__(self, rules: Iterable[Rule], state: MutableMapping[str, Any], *, lateness: timedelta) -> None:
        self.rules: dict[str, Rule] = {r.id: r for r in rules if r.enabled}
        self.state = state
        self.lateness = lateness
        self.watermark: datetime | None = None
        self._saved_watermark: datetime | None = None
        self.stats = EvalStats()

    def set_rules(self, rules: Iterable[Rule]) -> None:
        """Swap the rule set (reload); windows of removed rules are dropped at their close."""
        self.rules = {r.id: r for r in rules if r.enabled}

    def add(self, doc: ScoredDocument) -> list[Alert]:
        """Count one document in every window of every matching rule; returns early-fired alerts and the alerts
        of windows the advancing event time closed."""
        self.stats.documents += 1
        if self.watermark is None:  # first document of this process: resume from the saved watermark, if any
            self.watermark = self._saved_watermark = self._load_watermark()
        when = event_time(doc)
        fired: list[Alert] = []
        negative = doc.sentiment.label == "negative"
        risk = doc_risk(doc)
        matched = False
        for rule in self.rules.values():
            if not rule.matches(doc):
                continue
            for group in rule.groups(doc):
                gkey = group_key(group)
                for start in window_starts(when, rule.window_size, rule.window_step):
                    end = start + rule.window_size
                    if self.watermark is not None and end + self.lateness <= self.watermark:
                        self.stats.late += 1
                        continue
                    key = _Key(rule.id, gkey, start).encode()
                    raw = self.state.get(key)
                    agg = WindowAgg.from_dict(raw) if raw else WindowAgg()
                    agg.add(doc.id, negative=negative, risk=risk)
                    matched = True
                    if rule.fire_early and not agg.fired:
                        alert = self._try_fire(rule, group, start, agg)
                        if alert is not None:
                            fired.append(alert)
                    self.state[key] = agg.to_dict()
        self.stats.matched += int(matched)
        if self.watermark is None or when > self.watermark:
            self.watermark = when
            if self._saved_watermark is None or when - self._saved_watermark >= WATERMARK_SAVE_EVERY:
                self.state[WATERMARK_KEY] = when.timestamp()
                self._saved_watermark = when
        fired.extend(self._close(self.watermark))
        return fired

    def _load_watermark(self) -> datetime | None:
        saved = self.state.get(WATERMARK_KEY)
        return datetime.fromtimestamp(float(saved), tz=UTC) if saved is not None else None

    def advance(self, now: datetime) -> list[Alert]:
        """Close every window whose end plus lateness is before ``now`` (wall clock, for idle streams)."""
        return self._close(as_utc(now))

    def open_windows(self) -> int:
        return sum(1 for k in list(self.state.keys()) if str(k).startswith("w|"))

    def _keys(self) -> Iterator[_Key]:
        for raw in list(self.state.keys()):
            if str(raw).startswith("w|"):
                yield _Key.decode(str(raw))

    def _close(self, watermark: datetime) -> list[Alert]:
        fired: list[Alert] = []
        closing: list[_Key] = []
        for key in self._keys():
            rule = self.rules.get(key.rule_id)
            size = rule.window_size if rule is not None else timedelta(0)
            if rule is None or key.start + size + self.lateness <= watermark:
                closing.append(key)
        closing.sort(key=lambda k: (k.start, k.rule_id, k.group))
        for key in closing:
            encoded = key.encode()
            raw = self.state.get(encoded)
            del self.state[encoded]
            rule = self.rules.get(key.rule_id)
            if rule is None or raw is None:
                continue
            agg = WindowAgg.from_dict(raw)
            if not agg.fired:
                alert = self._try_fire(rule, json.loads(key.group), key.start, agg)
                if alert is not None:
                    fired.append(alert)
        return fired

    def _try_fire(self, rule: Rule, group: dict[str, str], start: datetime, agg: WindowAgg) -> Alert | None:
        ok, value = should_fire(rule, agg)
        if not ok:
            return None
        skey = _silence_key(rule.id, group_key(group))
        last = self.state.get(skey)
        last_start = datetime.fromtimestamp(int(last), tz=UTC) if last is not None else None
        agg.fired = True  # evaluated and decided: never reconsidered, whether sent or silenced
        if is_silenced(last_start, start, rule.silence_for):
            self.stats.silenced += 1
            return None
        self.state[skey] = int(start.timestamp())
        self.stats.fired += 1
        return make_alert(rule, group, start, agg, value)


def dry_run(rule: Rule, docs: Iterable[ScoredDocument]) -> list[Alert]:
    """Which windows would fire for these documents (``alerts test-rule``): replay them in event-time order."""
    evaluator = Evaluator([rule.model_copy(update={"enabled": True})], {}, lateness=timedelta(0))
    ordered = sorted(docs, key=event_time)
    alerts: list[Alert] = []
    for doc in ordered:
        alerts.extend(evaluator.add(doc))
    alerts.extend(evaluator.advance(datetime.max.replace(tzinfo=UTC) - timedelta(days=2)))
    return alerts
