"""Rule schema, window assignment, evaluation and silences: pure logic, no services."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerts.rules import Evaluator, Rule, RuleError, alert_id, dry_run, load_rule, load_rules_file
from alerts.windows import is_silenced, parse_duration, window_starts
from tests.alerts.helpers import scored

T0 = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def rule(**kw: object) -> Rule:
    base: dict[str, object] = {"id": "r1", "name": "burst", "window": "15m", "metric": "count", "threshold": 3}
    base.update(kw)
    return load_rule(base)


def test_parse_duration() -> None:
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("2h") == timedelta(hours=2)
    for bad in ("15", "0m", "-1h", "15 minutes", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_tumbling_and_hopping_windows() -> None:
    when = T0 + timedelta(minutes=17)
    assert window_starts(when, timedelta(minutes=15), timedelta(minutes=15)) == [T0 + timedelta(minutes=15)]
    hops = window_starts(when, timedelta(minutes=15), timedelta(minutes=5))
    assert hops == [T0 + timedelta(minutes=5), T0 + timedelta(minutes=10), T0 + timedelta(minutes=15)]
    assert all(s <= when < s + timedelta(minutes=15) for s in hops)


def test_rule_schema_rejects_bad_rules_with_clear_errors() -> None:
    with pytest.raises(RuleError, match="window"):
        rule(window="fifteen")
    with pytest.raises(RuleError, match="share in"):
        rule(metric="negative_share", threshold=3)
    with pytest.raises(RuleError, match="hop must divide"):
        rule(hop="7m")
    with pytest.raises(RuleError, match="treshold: Extra inputs"):
        rule(treshold=2)
    with pytest.raises(RuleError, match="not an http"):
        rule(webhooks=["ftp://example.com/x"])
    with pytest.raises(RuleError, match="id must be"):
        rule(id="has space")


def test_rules_file_json_and_yaml(tmp_path: Path) -> None:
    j = tmp_path / "rules.json"
    j.write_text(json.dumps([{"id": "a", "name": "A", "threshold": 2}, {"id": "b", "name": "B", "threshold": 5}]))
    assert [r.id for r in load_rules_file(j)] == ["a", "b"]
    y = tmp_path / "rules.yaml"
    y.write_text("id: c\nname: C\nmetric: mean_risk\nthreshold: 0.7\ngroup_by: [entity]\n")
    (r,) = load_rules_file(y)
    assert r.metric == "mean_risk" and r.group_by == ["entity"]
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps([{"id": "a", "name": "A", "threshold": 2}] * 2))
    with pytest.raises(RuleError, match="duplicate"):
        load_rules_file(dup)
    # a file that does not parse is named, with the parser's position
    broken = tmp_path / "broken.json"
    broken.write_text('{"id": ')
    with pytest.raises(RuleError, match=r"broken\.json: not valid JSON: Expecting value: line 1 column 8"):
        load_rules_file(broken)
    broken_yaml = tmp_path / "broken.yaml"
    broken_yaml.write_text("id: [c\n")
    with pytest.raises(RuleError, match=r"broken\.yaml: not valid YAML"):
        load_rules_file(broken_yaml)


def test_filters_and_groups() -> None:
    r = rule(
        channel="news",
        filter={"topics": ["Stock Movement"], "entities": ["$ACME", "$BETA"]},
        group_by=["entity", "topic"],
    )
    doc = scored("d1", T0, entities=("$ACME", "$BETA", "$ZED"))
    assert r.matches(doc)
    assert r.groups(doc) == [
        {"entity": "$ACME", "topic": "Stock Movement"},
        {"entity": "$BETA", "topic": "Stock Movement"},
    ]
    assert not r.matches(scored("d2", T0, topic="Earnings"))
    assert not r.matches(scored("d3", T0, entities=("$OTHER",)))
    assert not r.matches(scored("d4", T0, channel="customer_service"))


def test_count_fires_once_at_window_close_with_deterministic_id() -> None:
    r = rule(threshold=3, min_docs=1)
    ev = Evaluator([r], {}, lateness=timedelta(minutes=1))
    out = []
    for i in range(4):
        out += ev.add(scored(f"d{i}", T0 + timedelta(minutes=i)))
    assert out == []  # window still open
    out = ev.advance(T0 + timedelta(minutes=16, seconds=1))
    assert len(out) == 1
    alert = out[0]
    assert alert.doc_count == 4 and alert.value == 4
    assert alert.window_start == T0 and alert.window_end == T0 + timedelta(minutes=15)
    assert alert.id == alert_id("r1", {}, T0)
    assert set(alert.sample_doc_ids) == {"d0", "d1", "d2", "d3"}
    assert ev.advance(T0 + timedelta(hours=5)) == []  # never twice
    assert ev.open_windows() == 0


def test_below_threshold_or_min_docs_does_not_fire() -> None:
    r = rule(metric="negative_share", threshold=0.5, min_docs=4)
    ev = Evaluator([r], {}, lateness=timedelta(0))
    for i in range(3):  # 100% negative but only 3 documents
        ev.add(scored(f"d{i}", T0 + timedelta(minutes=i)))
    assert ev.advance(T0 + timedelta(hours=1)) == []
    ev2 = Evaluator([r], {}, lateness=timedelta(0))
    for i, s in enumerate(["negative", "positive", "positive", "neutral", "negative"]):
        ev2.add(scored(f"d{i}", T0 + timedelta(minutes=i), sentiment=s))
    assert ev2.advance(T0 + timedelta(hours=1)) == []  # 2/5 < 0.5


def test_negative_share_by_entity() -> None:
    r = rule(metric="negative_share", threshold=0.6, min_docs=3, group_by=["entity"])
    ev = Evaluator([r], {}, lateness=timedelta(0))
    for i, s in enumerate(["negative", "negative", "negative", "positive"]):
        ev.add(scored(f"a{i}", T0 + timedelta(minutes=i), sentiment=s, entities=("$ACME",)))
    for i, s in enumerate(["negative", "positive", "positive"]):
        ev.add(scored(f"b{i}", T0 + timedelta(minutes=i), sentiment=s, entities=("$BETA",)))
    fired = ev.advance(T0 + timedelta(hours=1))
    assert [(a.group, a.value) for a in fired] == [({"entity": "$ACME"}, 0.75)]


def test_event_time_watermark_closes_windows_and_drops_late_docs() -> None:
    r = rule(threshold=2)
    ev = Evaluator([r], {}, lateness=timedelta(minutes=2))
    ev.add(scored("d0", T0))
    ev.add(scored("d1", T0 + timedelta(minutes=1)))
    fired = ev.add(scored("d2", T0 + timedelta(minutes=17, seconds=1)))  # passes end + lateness of window 1
    assert [a.window_start for a in fired] == [T0]
    ev.add(scored("late", T0 + timedelta(minutes=3)))  # its window is closed: counted as late, not reopened
    assert ev.stats.late == 1


def test_a_restarted_evaluator_resumes_the_saved_watermark() -> None:
    """The state table outlives the process; the watermark in it keeps a late document late after a restart."""
    state: dict[str, Any] = {}
    before = Evaluator([rule(threshold=2)], state, lateness=timedelta(minutes=2))
    before.add(scored("d0", T0))
    before.add(scored("d1", T0 + timedelta(minutes=20)))  # closes window 1
    before.add(scored("d2", T0 + timedelta(minutes=20, seconds=30)))  # under a minute later: not saved again
    after = Evaluator([rule(threshold=2)], state, lateness=timedelta(minutes=2))
    after.add(scored("late", T0 + timedelta(minutes=3)))
    assert after.stats.late == 1 and after.open_windows() == 1  # only window 2 (d1, d2); window 1 not reopened
    assert after.watermark == T0 + timedelta(minutes=20)  # the saved one: at most a minute behind
    fresh = Evaluator([rule(threshold=2)], {}, lateness=timedelta(minutes=2))
    fresh.add(scored("late", T0 + timedelta(minutes=3)))
    assert fresh.stats.late == 0  # without a saved watermark the same document opens a window


def test_fire_early_fires_at_crossing() -> None:
    r = rule(threshold=2, fire_early=True)
    ev = Evaluator([r], {}, lateness=timedelta(0))
    assert ev.add(scored("d0", T0)) == []
    (alert,) = ev.add(scored("d1", T0 + timedelta(minutes=1)))
    assert alert.doc_count == 2
    assert ev.add(scored("d2", T0 + timedelta(minutes=2))) == []
    assert ev.advance(T0 + timedelta(hours=1)) == []


def test_silence_suppresses_refire_of_same_group() -> None:
    assert is_silenced(T0, T0 + timedelta(minutes=30), timedelta(hours=1))
    assert not is_silenced(T0, T0 + timedelta(hours=1), timedelta(hours=1))
    assert not is_silenced(None, T0, timedelta(hours=1))
    r = rule(threshold=1, window="15m", silence="1h", group_by=["entity"])
    docs = [scored(f"d{m}", T0 + timedelta(minutes=m)) for m in (0, 20, 40, 65)]
    docs.append(scored("other", T0 + timedelta(minutes=20), entities=("$BETA",)))
    fired = dry_run(r, docs)
    starts = sorted((a.group["entity"], a.window_start) for a in fired)
    # $ACME: 10:00 fires, 10:15 and 10:30 silenced, 11:00 fires again; $BETA has its own silence
    assert starts == [("$ACME", T0), ("$ACME", T0 + timedelta(hours=1)), ("$BETA", T0 + timedelta(minutes=15))]


def test_replay_gives_same_alert_ids_and_state_is_plain_json() -> None:
    r = rule(threshold=0.5, hop="5m", metric="mean_risk", group_by=["topic"], min_docs=2)
    docs = [scored(f"d{i}", T0 + timedelta(minutes=3 * i), risk=0.8) for i in range(6)]
    first = dry_run(r, docs)
    second = dry_run(r, list(reversed(docs)))
    assert [a.id for a in first] == [a.id for a in second] and first
    state: dict[str, object] = {}
    ev = Evaluator([r], state, lateness=timedelta(hours=1))
    for d in docs:
        ev.add(d)
    json.dumps(state)  # a faust Table with the json serializer can hold it
    restored = Evaluator([r], json.loads(json.dumps(state)), lateness=timedelta(hours=1))
    assert [a.id for a in restored.advance(T0 + timedelta(days=1))] == [a.id for a in first]


def test_shipped_starter_rules_validate() -> None:
    path = Path(__file__).resolve().parents[2] / "alerts" / "default_rules.yaml"
    rules = load_rules_file(path)
    assert {r.channel for r in rules} == {"news", "customer_service"}
    assert all(not r.webhooks for r in rules)  # nothing is sent anywhere until an operator adds a target
