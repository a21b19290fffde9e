"""`posttrain ab` end to end: decisions on hand-built logs, peeking, output, and bad input."""
import json

import pytest
from statsmodels.stats.proportion import proportions_ztest

from posttrain.ab.analysis import Settings, analyze
from posttrain.ab.schema import read_feedback
from posttrain.cli import main


def rows_for(variant, up=0, down=0, ratings=(), success=0, failure=0, user_prefix=None):
    rows = [{"variant": variant, "thumbs": "up"} for _ in range(up)]
    rows += [{"variant": variant, "thumbs": -1} for _ in range(down)]
    rows += [{"variant": variant, "rating": r} for r in ratings]
    rows += [{"variant": variant, "success": True} for _ in range(success)]
    rows += [{"variant": variant, "success": False} for _ in range(failure)]
    for k, row in enumerate(rows):
        row["user"] = f"{user_prefix or variant}{k}"
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def run_cli(capsys, *argv):
    code = main(["ab", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ship_when_primary_improves_and_guardrails_hold(tmp_path, capsys):
    log = write(tmp_path / "log.jsonl", rows_for("A", 300, 200, [3, 4, 5] * 40, 80, 20)
                + rows_for("B", 360, 140, [3, 4, 5] * 40, 81, 19))
    out_json = tmp_path / "out" / "result.json"
    code, out, _ = run_cli(capsys, log, "--primary", "thumbs", "--output", out_json)
    assert code == 0
    assert "Recommendation: SHIP B" in out
    result = json.loads(out_json.read_text())
    primary = result["comparisons"]["B"][0]
    z, p = proportions_ztest([360, 300], [500, 500])
    assert primary["role"] == "primary" and primary["statistic"] == pytest.approx(z)
    assert primary["p_value"] == pytest.approx(p) and primary["difference"] == pytest.approx(0.12)
    assert result["recommendation"] == {"decision": "ship", "variant": "B",
                                        "reason": result["recommendations"]["B"]["reason"]}
    assert result["guardrails"] == ["rating", "success"]
    assert result["summaries"]["thumbs"]["A"]["rate"] == pytest.approx(0.6)
    assert result["power_analysis"]["B"]["required_n"] > 0


def test_keep_when_a_guardrail_regresses(tmp_path, capsys):
    log = write(tmp_path / "log.jsonl", rows_for("A", 300, 200, success=85, failure=15)
                + rows_for("B", 360, 140, success=60, failure=40))
    code, out, _ = run_cli(capsys, log, "--primary", "thumbs")
    assert code == 0 and "B: KEEP" in out and "guardrail regressed: success" in out


def test_keep_when_the_interval_rules_out_the_mde(tmp_path, capsys):
    log = write(tmp_path / "log.jsonl", rows_for("A", 2500, 2500) + rows_for("B", 2505, 2495))
    code, out, _ = run_cli(capsys, log, "--mde", "0.03")
    assert "B: KEEP" in out and "rules out an improvement of 0.03" in out
    assert "primary metric not given; using thumbs" in out


def test_collect_more_data_reports_the_needed_size(tmp_path, capsys):
    log = write(tmp_path / "log.jsonl", rows_for("A", 30, 20) + rows_for("B", 33, 17))
    code, out, _ = run_cli(capsys, log, "--output", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["recommendation"]["decision"] == "collect more data"
    needed = result["power_analysis"]["B"]["required_n"]
    assert f"needs about {needed:,} votes per variant (have 50)" in out


def test_peeking_correction_changes_the_decision(tmp_path, capsys):
    # p is about 0.048: significant once, not after five looks
    log = write(tmp_path / "log.jsonl", rows_for("A", 300, 200) + rows_for("B", 330, 170))
    assert 0.01 < proportions_ztest([330, 300], [500, 500])[1] < 0.05
    _, out, _ = run_cli(capsys, log)
    assert "SHIP B" in out and "peeking" not in out
    _, out, _ = run_cli(capsys, log, "--looks", "5", "--correction", "bonferroni")
    assert "COLLECT MORE DATA" in out and "looked at 5 times" in out and "p < 0.01" in out
    _, out, _ = run_cli(capsys, log, "--looks", "5")
    assert "O'Brien-Fleming" in out


def test_look_rows_count_and_record_look_appends(tmp_path, capsys):
    rows = rows_for("A", 30, 20) + rows_for("B", 33, 17)
    for k, row in enumerate(rows):
        row["timestamp"] = 1_700_000_000 + k
    rows.insert(50, {"event": "look", "timestamp": 1_700_000_049})
    log = write(tmp_path / "log.jsonl", rows)
    code, out, _ = run_cli(capsys, log, "--record-look", "--output", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["looks"] == 2 and result["information_fractions"] == [0.5]
    assert "1 earlier look(s) recorded in the log" in out
    last = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "look" and last["timestamp"].endswith("Z")
    assert len(read_feedback([log]).looks) == 2


def test_named_logs_and_pairwise_preferences(tmp_path, capsys):
    a = write(tmp_path / "a.jsonl", [{"thumbs": 1}] * 10 + [{"thumbs": 0}] * 3 + [{"thumbs": -1}] * 10)
    b = write(tmp_path / "b.jsonl", [{"thumbs": 1}] * 12 + [{"thumbs": -1}] * 8)
    prefs = write(tmp_path / "p.jsonl", [{"preferred": "B"}] * 30 + [{"preferred": "A"}] * 15
                  + [{"preferred": "tie", "pair": ["A", "B"]}] * 5)
    code, out, _ = run_cli(capsys, f"A={a}", f"B={b}", prefs, "--primary", "preference",
                           "--output", tmp_path / "r.json")
    result = json.loads((tmp_path / "r.json").read_text())
    pref = result["comparisons"]["B"][0]
    assert (pref["wins"], pref["losses"], pref["ties"]) == (30, 15, 5)
    assert pref["treatment"] == pytest.approx(32.5 / 50)
    assert result["bradley_terry"]["variants"]["B"]["p_beats_reference"] == pytest.approx(32.5 / 50)
    assert result["summaries"]["thumbs"]["A"]["n"] == 20  # thumbs 0 is no vote
    assert "3 row(s) with thumbs 0" in out


def test_three_variants_split_alpha(tmp_path):
    log = write(tmp_path / "log.jsonl", rows_for("A", 50, 50) + rows_for("B", 60, 40) + rows_for("C", 52, 48))
    result = analyze(read_feedback([log]), Settings(alpha=0.05))
    assert result["treatments"] == ["B", "C"] and result["primary_threshold"] == pytest.approx(0.025)
    assert set(result["recommendations"]) == {"B", "C"}


@pytest.mark.parametrize("row,message", [
    ({"variant": "A", "thumbs": "maybe"}, "field 'thumbs': expected 1, -1, 0, 'up' or 'down', got 'maybe'"),
    ({"variant": "A", "rating": 6}, "field 'rating': expected an integer from 1 to 5, got 6"),
    ({"variant": "A", "rating": 3.5}, "field 'rating': expected an integer from 1 to 5, got 3.5"),
    ({"variant": "A", "success": "yes"}, "field 'success': expected true or false, got 'yes'"),
    ({"thumbs": 1}, "field 'variant': missing (or give the file as NAME=PATH)"),
    ({"variant": "A", "thumb": 1}, "no feedback: expected at least one of thumbs, rating, success, preferred "
                                   "(or a comment in 'text')"),
    ({"variant": "A", "thumbs": 1, "timestamp": "yesterday"},
     "field 'timestamp': expected seconds since the epoch or an ISO 8601 time, got 'yesterday'"),
    ({"event": "peek"}, "field 'event': expected 'look', got 'peek'"),
    ({"preferred": "C", "pair": ["A", "B"]}, "field 'preferred': expected 'A', 'B' or 'tie', got 'C'"),
    ({"preferred": "A", "pair": ["A", "A"]}, "field 'pair': the two variants must differ, got ['A', 'A']"),
    ({"variant": "tie", "thumbs": 1}, "field 'variant': 'tie' is reserved for pairwise judgements and cannot name a variant"),
])
def test_bad_rows_give_one_line_errors(tmp_path, capsys, row, message):
    log = write(tmp_path / "log.jsonl", [{"variant": "A", "thumbs": 1}, {"variant": "B", "thumbs": -1}, row])
    code, out, err = run_cli(capsys, log)
    assert code == 2 and out == ""
    assert err == f"posttrain ab: error: {log}:3: {message}\n"


def test_pair_needed_with_three_variants(tmp_path, capsys):
    log = write(tmp_path / "log.jsonl", rows_for("A", 1) + rows_for("B", 1) + rows_for("C", 1) + [{"preferred": "B"}])
    code, _, err = run_cli(capsys, log)
    assert code == 2
    assert err.strip() == (f"posttrain ab: error: {log}:4: field 'pair': needed when the experiment has 3 variants "
                           "(A, B, C), not 2")


@pytest.mark.parametrize("args,message", [
    (["--primary", "rating"], "config field 'primary': no rating data in the logs (found: thumbs)"),
    (["--control", "Z"], "config field 'control': 'Z' is not a variant in the logs (A, B)"),
    (["--alpha", "1.5"], "config field 'alpha': must be strictly between 0 and 1, got 1.5"),
    (["--primary", "clicks"], "config field 'primary': 'clicks' is not one of thumbs, rating, success, preference"),
    (["--guardrails", "thumbs", "--primary", "thumbs"],
     "config field 'guardrails': thumbs is the primary metric and cannot also be a guardrail"),
])
def test_bad_options(tmp_path, capsys, args, message):
    log = write(tmp_path / "log.jsonl", rows_for("A", 5, 5) + rows_for("B", 6, 4))
    code, _, err = run_cli(capsys, log, *args)
    assert code == 2 and err.strip() == f"posttrain ab: error: {message}"


def test_missing_file_and_single_variant(tmp_path, capsys):
    code, _, err = run_cli(capsys, tmp_path / "nope.jsonl")
    assert code == 2 and err.strip() == f"posttrain ab: error: {tmp_path / 'nope.jsonl'}: file not found"
    log = write(tmp_path / "one.jsonl", rows_for("A", 5, 5))
    code, _, err = run_cli(capsys, log)
    assert code == 2 and "need at least two variants, found ['A']" in err


def test_tiny_samples_never_decide(tmp_path, capsys):
    log = write(tmp_path / "log.jsonl", rows_for("A", 0, 10) + rows_for("B", 10, 0))
    code, out, _ = run_cli(capsys, log)
    assert "COLLECT MORE DATA" in out and "need at least 20 per variant" in out


def _cmp(metric, difference, p, n=100, ci=None, threshold=0.05):
    return {"metric": metric, "difference": difference, "p_value": p, "significant": p < threshold,
            "threshold": threshold, "n_control": n, "n_treatment": n, "ci": ci or [difference - 0.05, difference + 0.05]}


@pytest.mark.parametrize("primary,guards,decision", [
    (_cmp("thumbs", 0.1, 0.001), [_cmp("rating", 0.2, 0.3)], "ship"),
    (_cmp("thumbs", 0.1, 0.001), [_cmp("rating", -0.3, 0.01)], "keep"),      # guardrail regression
    (_cmp("thumbs", -0.1, 0.001), [], "keep"),                                 # significantly worse
    (_cmp("thumbs", 0.01, 0.4), [_cmp("success", -0.1, 0.02)], "keep"),       # inconclusive + harm
    (_cmp("thumbs", 0.0, 0.9, ci=[-0.01, 0.015]), [], "keep"),                # rules out the MDE (0.02)
    (_cmp("thumbs", 0.01, 0.4, ci=[-0.02, 0.04]), [], "collect more data"),   # could still be +0.02
])
def test_decision_rules(primary, guards, decision):
    from posttrain.ab.analysis import decide

    assert decide(primary, guards, {"required_n": 5000, "unit": "votes", "current_n": 100}, 0.02, "thumbs")[0] \
        == decision


def test_rows_as_the_web_app_exports_them(tmp_path):
    # the shape of `posttrain serve export --kind feedback` rows
    common = {"model": "tiny-random", "conversation_id": 1, "message_id": 2, "prompt": "hi", "response": "hello"}
    rows = [{"variant": "A", "user": "alice", "thumbs": 1, "rating": None, "text": "",
             "timestamp": "2025-05-01T12:00:00.123456+00:00", **common},
            {"variant": "B", "user": "bob", "thumbs": None, "rating": 4, "text": "good", "timestamp":
             "2025-05-01T12:00:01.000000+00:00", **common},
            {"variant": "B", "user": "carol", "thumbs": None, "rating": None, "text": "just a comment",
             "timestamp": "2025-05-01T12:00:02.000000+00:00", **common}]
    log = read_feedback([write(tmp_path / "export.jsonl", rows)])
    assert [(r.variant, r.thumbs, r.rating) for r in log.rows] == [("A", 1, None), ("B", None, 4), ("B", None, None)]
    assert log.rows[1].timestamp - log.rows[0].timestamp == pytest.approx(0.876544)
