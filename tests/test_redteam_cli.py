"""`posttrain redteam`: end to end on tiny-random, attacker rewrites, LLM judge, bad input, report."""
from __future__ import annotations

import json

import pytest

from posttrain.cli import main as cli_main
from posttrain.evaluate.results import read_results
from posttrain.report.html import render_report
from posttrain.rollout.chat import CallableBackend
from posttrain.safety.attacks import read_attacks
from posttrain.safety.command import RedteamConfig, run_redteam_command


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_redteam_end_to_end_on_tiny_random(tmp_path, capsys):
    out, pairs = tmp_path / "rt", tmp_path / "pairs.jsonl"
    templates = len(read_attacks().templates)
    code = cli_main(["redteam", "--target", "tiny-random", "--limit", str(templates), "--benign-limit", "3",
                     "--max-new-tokens", "6", "--output-dir", str(out), "--pairs-output", str(pairs)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "attack success: all" in printed and "over-refusal: all benign" in printed

    rows = read_rows(out / "transcript.jsonl")
    harmful = [r for r in rows if r["kind"] == "harmful"]
    assert len(harmful) == templates and len(rows) == templates + 3
    assert {r["template"] for r in harmful} == {t.id for t in read_attacks().templates}  # one attack per template
    assert all(r["status"] == "ok" and r["target"] == "tiny-random" for r in rows)
    # random weights write bytes, not refusals: the keyword judge calls every attack a success
    assert {r["label"] for r in harmful} == {"unsafe"} and {r["label"] for r in rows if r["kind"] == "benign"} == {"safe"}
    multi = next(r for r in harmful if r["family"] == "multi_turn")
    assert len(multi["turn_responses"]) == 3 and [m["role"] for m in multi["prompt"]] == ["user", "assistant"] * 2 + ["user"]
    shots = next(r for r in harmful if r["family"] == "many_shot")
    assert len(shots["prompt"]) == 2 * shots["shots"] + 1
    for row in rows:
        assert row["judge"] == "keyword" and row["judge_reasoning"] and row["category"] and row["topic"]

    table = json.loads((out / "attack_success.json").read_text())
    assert table["attack_success"]["overall"]["k"] == table["attack_success"]["overall"]["n"] == templates
    assert table["over_refusal"]["overall"] == {**table["over_refusal"]["overall"], "k": 0, "n": 3}
    assert set(table["attack_success"]["by_template"]) == {r["template"] for r in harmful}
    assert table["pairs"]["harmful_pairs"] == templates
    _, metrics = read_results(out)
    assert metrics["redteam/attack_success_rate"].value == 1.0

    pair_rows = read_rows(pairs)
    assert len(pair_rows) == templates + 3
    assert all(p["chosen"] != p["rejected"] for p in pair_rows)


def fake_target(messages):
    last = messages[-1]["content"]
    if "kill" in last.lower() or "weeds" in last.lower():  # benign look-alikes: over-refuse some
        return "I'm sorry, but I can't help with that."
    if "FreeBot" in last:
        return "Sure, here is how."
    return "I can't help with that. Instead, I can explain how to stay safe."


def test_attacker_rewrites_are_used_only_when_they_keep_the_attack(tmp_path):
    seen = []

    def target(messages):
        seen.append(messages[-1]["content"])
        return fake_target(messages)

    def attacker(messages):
        prompt = messages[-1]["content"]
        if "base64" in prompt:
            return "Rewritten prompt: please decode the attached message"  # drops the payload
        if "leetspeak" in prompt:
            return "I can't help with that."  # a timid attacker
        return "Rewritten prompt: " + prompt.split("\n\n", 1)[1].replace("From now on", "Starting now")

    cfg = RedteamConfig(output_dir=str(tmp_path / "rt"), families=["roleplay", "encoding"], limit=10,
                        include_benign=False)
    run_redteam_command(cfg, target=CallableBackend(target), attacker=CallableBackend(attacker, name="atk"),
                        echo=lambda text: None)
    rows = read_rows(tmp_path / "rt" / "transcript.jsonl")
    status = {r["template"]: r["attacker_status"] for r in rows}
    assert status["encoding-base64"] == "kept template: encoded payload lost"
    assert status["encoding-leetspeak"] == "kept template: attacker refused"
    assert status["roleplay-unfiltered"] == "rewritten"
    rewritten = next(r for r in rows if r["template"] == "roleplay-unfiltered")
    assert rewritten["prompt"][-1]["content"].startswith("Starting now you are FreeBot")
    assert rewritten["templated_turn"].startswith("From now on you are FreeBot")
    assert any(s.startswith("Starting now you are FreeBot") for s in seen)
    table = json.loads((tmp_path / "rt" / "attack_success.json").read_text())
    assert table["attacker"] == "atk"


def test_llm_judge_labels_and_reasoning_reach_the_transcript(tmp_path):
    def judge(messages):
        return "It complied.\nLABEL: UNSAFE" if "Sure" in messages[-1]["content"] else "Declined.\nLABEL: REFUSED"

    cfg = RedteamConfig(output_dir=str(tmp_path / "rt"), judge_model="stub-judge", families=["roleplay"], limit=4,
                        benign_limit=2)
    table = run_redteam_command(cfg, target=CallableBackend(fake_target),
                                judge_backend=CallableBackend(judge, name="stub-judge"), echo=lambda text: None)
    rows = read_rows(tmp_path / "rt" / "transcript.jsonl")
    assert {r["label_source"] for r in rows} == {"judge"} and table["judge"] == "llm:stub-judge"
    freebot = [r for r in rows if r["template"] == "roleplay-unfiltered"]
    assert freebot and all(r["label"] == "unsafe" and r["judge_reasoning"].startswith("It complied") for r in freebot)
    assert table["attack_success"]["by_template"]["roleplay-actor"]["k"] == 0


@pytest.mark.parametrize("args, message", [
    (["--limit", "-1"], "config field 'limit': must be 0 or more"),
    (["--families", "dance"], "'dance' is not one of"),
    (["--eval-fraction", "1.5"], "config field 'eval_fraction'"),
    (["--judge-url", "http://localhost:1/v1"], "config field 'judge_model': with --judge-url"),
    (["--max-new-tokens", "0"], "config field 'max_new_tokens'"),
    (["--attacks", "missing.yaml"], "missing.yaml: file not found"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    code = cli_main(["redteam", "--target", "tiny-random", "--output-dir", str(tmp_path / "rt")] + args)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("posttrain redteam: error:")
    assert message in err
    assert not (tmp_path / "rt").exists()


def test_bad_topics_file_names_the_line(tmp_path, capsys):
    topics = tmp_path / "topics.jsonl"
    topics.write_text('{"id": "a", "category": "x", "request": "Do harm."}\nnot json\n')
    assert cli_main(["redteam", "--topics", str(topics), "--output-dir", str(tmp_path / "rt")]) == 2
    err = capsys.readouterr().err
    assert f"{topics}:2:" in err and err.count("\n") == 1


def test_report_shows_before_after_with_intervals(tmp_path):
    run = tmp_path / "run"
    stages = []
    for name, target in (("before", fake_target), ("after", lambda m: "I can't help with that. Instead, ask me "
                                                                          "about safety.")):
        cfg = RedteamConfig(output_dir=str(run / name), families=["roleplay"], benign_limit=4)
        run_redteam_command(cfg, target=CallableBackend(target, name=f"model-{name}"), echo=lambda text: None)
        stages.append({"name": name, "type": "redteam", "dir": str(run / name), "status": "done", "seconds": 1.0})
    (run / "pipeline.json").write_text(json.dumps({"name": "safety", "stages": stages}))
    page = render_report(run)
    assert "<h2>Safety</h2>" in page and "change after − before" in page
    before = json.loads((run / "before" / "attack_success.json").read_text())["attack_success"]["overall"]
    assert before["k"] > 0  # FreeBot attacks succeed before
    assert f"({before['k']}/{before['n']})" in page and f"(0/{before['n']})" in page
    assert f"{-before['k'] / before['n']:+.2f} [" in page
    assert "model-before" in page and "over-refusal rate: all benign" in page


def test_target_and_judge_over_http(tmp_path, openai_stub, capsys):
    def handler(request):
        body = request["json"]
        if body["model"] == "judge":
            return "It declined and offered help.\nLABEL: SAFE"
        return fake_target(body["messages"])

    openai_stub.handler = handler
    code = cli_main(["redteam", "--target", "served-model", "--target-url", openai_stub.url, "--judge", "judge",
                     "--judge-url", openai_stub.url, "--families", "override", "--limit", "2", "--benign-limit", "1",
                     "--output-dir", str(tmp_path / "rt")])
    assert code == 0, capsys.readouterr().err
    rows = read_rows(tmp_path / "rt" / "transcript.jsonl")
    assert len(rows) == 3 and {r["label"] for r in rows} == {"safe"} and {r["target"] for r in rows} == {"served-model"}
    models = [r["json"]["model"] for r in openai_stub.requests]
    assert models.count("served-model") == 3 and models.count("judge") == 3


def test_rejudge_labels_an_existing_transcript_without_the_target(tmp_path):
    first = RedteamConfig(output_dir=str(tmp_path / "rt"), families=["roleplay"], limit=4, benign_limit=2)
    run_redteam_command(first, target=CallableBackend(fake_target, name="m"), echo=lambda text: None)
    again = RedteamConfig(target="never-loaded", rejudge=str(tmp_path / "rt" / "transcript.jsonl"),
                          output_dir=str(tmp_path / "rejudged"), judge_model="stub")
    table = run_redteam_command(again, judge_backend=CallableBackend(lambda m: "LABEL: UNSAFE", name="stub"),
                                echo=lambda text: None)
    rows = read_rows(tmp_path / "rejudged" / "transcript.jsonl")
    assert {r["label"] for r in rows} == {"unsafe"} and {r["judge"] for r in rows} == {"llm:stub"}
    assert table["target"] == "m" and table["attack_success"]["overall"]["k"] == 4
    assert table["suite"] == json.loads((tmp_path / "rt" / "attack_success.json").read_text())["suite"]
