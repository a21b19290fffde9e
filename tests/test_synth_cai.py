"""`posttrain cai`: the critique → revision loop with a scripted model, judged pairs, tiny-random, bad input."""
from __future__ import annotations

import json

import pytest

from posttrain.cli import main
from posttrain.commands.cai import CaiConfig, run_cai
from posttrain.data import load_records
from posttrain.rollout.chat import CallableBackend
from posttrain.synth.cai import clean_revision, is_repetitive, revision_status
from posttrain.synth.constitution import load_constitution, parse_selection, plan

CONSTITUTION = """
name: test
principles:
  - name: a
    critique: "CRITIQUE a"
    revision: "REVISE a"
    rubric: "RUBRIC a"
  - name: b
    critique: "CRITIQUE b"
    revision: "REVISE b"
  - name: c
    critique: "CRITIQUE c"
    revision: "REVISE c"
"""


def fake_model(messages):
    """A deterministic 'model' whose replies depend on the conversation it is given.

    initial:  ANSWER(q)                       critique: "<p> issue in <response>"
    revision: "<response>+<p>"  (prompt 'same': the response unchanged; 'empty': nothing for a;
              'loop': a repetition loop for c)
    prompts 'fail-initial' / 'fail-critique' raise (a failed request) at that stage for principle b.
    """
    question = messages[0]["content"]
    if len(messages) == 1:
        if question == "fail-initial":
            raise TimeoutError
        return f"ANSWER({question})"
    request = messages[-1]["content"]
    if request.startswith("CRITIQUE"):
        name = request.split()[1]
        if question == "fail-critique" and name == "b":
            raise ConnectionError
        return f"{name} issue in {messages[-2]['content']}"
    name, current = request.split()[1], messages[-4]["content"]
    assert messages[-3]["content"] == f"CRITIQUE {name}" and messages[-2]["content"] == f"{name} issue in {current}"
    if question == "same":
        return current
    if question == "empty" and name == "a":
        return "   "
    if question == "loop" and name == "c":
        return "the same words again and " * 6
    return f"Revised response: {current}+{name}"


class RecordingBackend(CallableBackend):
    """Counts the batches the loop sends (one `complete` call per stage)."""

    def __init__(self, fn, name="fake"):
        super().__init__(fn, name)
        self.batch_sizes = []

    def complete(self, conversations, **kwargs):
        self.batch_sizes.append(len(conversations))
        return super().complete(conversations, **kwargs)


def write(path, text):
    path.write_text(text)
    return str(path)


def prompts_file(tmp_path, questions):
    return write(tmp_path / "prompts.jsonl", "".join(json.dumps({"prompt": q, "id": i}) + "\n"
                                                     for i, q in enumerate(questions)))


def read(path):
    return [json.loads(line) for line in open(path)]


def config(tmp_path, questions, **settings):
    return CaiConfig(prompts=prompts_file(tmp_path, questions), constitution=write(tmp_path / "c.yaml", CONSTITUTION),
                     trace_output=str(tmp_path / "trace.jsonl"), sft_output=str(tmp_path / "sft.jsonl"),
                     pairs_output=str(tmp_path / "pairs.jsonl"), **settings)


def test_trace_sft_and_pairs_with_a_scripted_model(tmp_path):
    questions = ["q1", "fail-initial", "fail-critique", "same", "empty", "loop"]
    backend = RecordingBackend(fake_model)
    summary = run_cai(config(tmp_path, questions, temperature=0.0), backend=backend, log=lambda _: None)

    # One batch for the initial responses, then one critique batch and one revision batch per
    # principle, each holding every prompt still alive (fail-critique drops out at b's critique).
    assert backend.batch_sizes == [6, 5, 5, 5, 4, 4, 4]

    traces = read(tmp_path / "trace.jsonl")
    assert [t["id"] for t in traces] == [0, 1, 2, 3, 4, 5]
    q1 = traces[0]
    assert q1["status"] == "ok" and q1["initial"] == "ANSWER(q1)" and q1["final"] == "ANSWER(q1)+a+b+c"
    assert [(s["principle"], s["status"]) for s in q1["steps"]] == [("a", "revised"), ("b", "revised"),
                                                                     ("c", "revised")]
    assert q1["steps"][1] == {"round": 1, "principle": "b", "critique_request": "CRITIQUE b",
                              "critique": "b issue in ANSWER(q1)+a", "revision_request": "REVISE b",
                              "revision": "ANSWER(q1)+a+b", "status": "revised"}  # label "Revised response:" cut
    assert traces[1]["status"] == "failed" and traces[1]["failed_at"] == "initial" and traces[1]["steps"] == []
    failed = traces[2]
    assert failed["failed_at"] == "round 1 principle b critique" and failed["final"] is None
    assert [s["status"] for s in failed["steps"]] == ["revised", "failed"]
    assert [s["status"] for s in traces[3]["steps"]] == ["unchanged"] * 3 and traces[3]["revised"] is False
    assert [s["status"] for s in traces[4]["steps"]] == ["empty", "revised", "revised"]
    assert traces[4]["final"] == "ANSWER(empty)+b+c"
    assert [s["status"] for s in traces[5]["steps"]] == ["revised", "revised", "repetitive"]
    assert traces[5]["final"] == "ANSWER(loop)+a+b"  # the loop did not replace the response

    sft = read(tmp_path / "sft.jsonl")
    assert sft == [
        {"id": 0, "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "ANSWER(q1)+a+b+c"}],
         "cai_principles": ["a", "b", "c"]},
        {"id": 4, "messages": [{"role": "user", "content": "empty"},
                               {"role": "assistant", "content": "ANSWER(empty)+b+c"}], "cai_principles": ["b", "c"]},
        {"id": 5, "messages": [{"role": "user", "content": "loop"},
                               {"role": "assistant", "content": "ANSWER(loop)+a+b"}], "cai_principles": ["a", "b"]}]
    pairs = read(tmp_path / "pairs.jsonl")
    assert [(p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        (0, "ANSWER(q1)+a+b+c", "ANSWER(q1)"), (4, "ANSWER(empty)+b+c", "ANSWER(empty)"),
        (5, "ANSWER(loop)+a+b", "ANSWER(loop)")]
    assert summary["failed_prompts"] == 2 and summary["failed_at"] == {"initial": 1, "critique": 1}
    assert summary["steps"] == {"revised": 8, "empty": 1, "unchanged": 3, "repetitive": 1, "failed": 1}
    assert summary["revised_prompts"] == 3 and summary["unrevised_prompts"] == 1
    assert summary["requests"]["failed"] == 2 and summary["sft_rows"] == 3 and summary["pairs"] == 3

    # The outputs feed the next stages as they are.
    assert [r.messages[-1]["content"] for r in load_records(tmp_path / "sft.jsonl", kind="sft")] == [
        "ANSWER(q1)+a+b+c", "ANSWER(empty)+b+c", "ANSWER(loop)+a+b"]
    assert load_records(tmp_path / "pairs.jsonl", kind="preference")[0].rejected == "ANSWER(q1)"


def test_sampled_principles_and_rounds(tmp_path):
    cfg = config(tmp_path, ["q1", "q2", "q3"], principles="sample:2", rounds=2, seed=7, temperature=0.0)
    backend = RecordingBackend(fake_model)
    run_cai(cfg, backend=backend, log=lambda _: None)
    assert backend.batch_sizes == [3] + [3] * 8  # 2 rounds x 2 slots x (critique, revision)
    traces = read(tmp_path / "trace.jsonl")
    constitution = load_constitution(cfg.constitution)
    expected = plan(constitution, parse_selection("sample:2", constitution), 3, 2, seed=7)
    for trace, prompt_plan in zip(traces, expected):
        names = [[p.name for p in round_plan] for round_plan in prompt_plan]
        assert all(len(set(r)) == 2 for r in names)  # two distinct principles per round
        assert [(s["round"], s["principle"]) for s in trace["steps"]] == [
            (r + 1, n) for r, round_names in enumerate(names) for n in round_names]
        assert trace["final"] == "ANSWER(" + trace["prompt"][0]["content"] + ")" + "".join(
            "+" + n for round_names in names for n in round_names)
    # The draw depends on the seed, and on nothing else.
    again = plan(constitution, parse_selection("sample:2", constitution), 3, 2, seed=7)
    assert [[[p.name for p in r] for r in x] for x in again] == [[[p.name for p in r] for r in x] for x in expected]
    other = plan(constitution, parse_selection("sample:2", constitution), 3, 2, seed=8)
    assert [[[p.name for p in r] for r in x] for x in other] != [[[p.name for p in r] for r in x] for x in expected]


def test_judged_pairs_follow_the_judge(tmp_path):
    seen_rubrics = []

    def judge(messages):
        text = messages[-1]["content"]
        seen_rubrics.append(text.split("Criteria:\n")[1].split("\n\n### Question")[0])
        question = text.split("### Question\n")[1].split("\n")[0]
        return {"keep-initial": "Initial is better. [[B]]", "tie-me": "[[C]]", "mumble": "no idea"}.get(
            question, "The revision is better. [[A]]")

    judge_backend = RecordingBackend(judge, name="scripted-judge")
    cfg = config(tmp_path, ["q1", "keep-initial", "tie-me", "mumble", "same"], principles="a,c",
                 pair_mode="judged", temperature=0.0)
    summary = run_cai(cfg, backend=RecordingBackend(fake_model), judge_backend=judge_backend, log=lambda _: None)
    assert judge_backend.batch_sizes == [4]  # 'same' was never revised, so it is not judged
    assert set(seen_rubrics) == {"- RUBRIC a\n- CRITIQUE c"}  # c has no rubric: its critique request stands in
    pairs = read(tmp_path / "pairs.jsonl")
    assert [(p["id"], p["chosen_is"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        (0, "revision", "ANSWER(q1)+a+c", "ANSWER(q1)"),
        (1, "initial", "ANSWER(keep-initial)", "ANSWER(keep-initial)+a+c")]
    assert pairs[0]["judge"] == "scripted-judge"
    assert summary["judged"] == {"revision_preferred": 1, "initial_preferred": 1, "tie": 1, "no_verdict": 1}


def test_repetitive_revisions_are_caught():
    loop = "I'm unsure of a claim I made. " * 8
    assert is_repetitive(loop) and revision_status(loop, "before") == "repetitive"
    prose = ("The sea holds salt, and drinking it makes thirst worse because the kidneys need more water "
             "to remove the salt than the seawater gives.")
    assert not is_repetitive(prose) and revision_status(prose, "before") == "revised"
    assert not is_repetitive("yes " * 5)  # too short to judge


def test_clean_revision():
    assert clean_revision("  Revised response: Be kind. ") == "Be kind."
    assert clean_revision("**Revision:** text") == "text"
    assert clean_revision("Revision of the plan: keep") == "Revision of the plan: keep"  # only a bare label goes


def test_default_constitution():
    constitution = load_constitution("default")
    assert constitution.names() == ["helpfulness", "harmlessness", "honesty", "respect", "privacy"]
    assert all(p.critique and p.revision and p.rubric for p in constitution.principles)


def test_over_http_with_failed_requests(tmp_path, openai_stub, capsys):
    """--url: the same loop over a real OpenAI-compatible server; an HTTP 400 is a failed request."""
    from openai_stub import Reply

    def handle(request):
        try:
            return fake_model(request["json"]["messages"])
        except (TimeoutError, ConnectionError):
            return Reply(status=400)

    openai_stub.handler = handle
    cfg = config(tmp_path, ["q1", "fail-initial", "fail-critique"])
    code = main(["cai", cfg.prompts, "--url", openai_stub.url, "--model", "fake", "--constitution", cfg.constitution,
                 "--trace-output", cfg.trace_output, "--sft-output", cfg.sft_output, "--max-retries", "0"])
    assert code == 0
    traces = read(cfg.trace_output)
    assert [t["failed_at"] for t in traces] == [None, "initial", "round 1 principle b critique"]
    assert traces[0]["final"] == "ANSWER(q1)+a+b+c"
    assert [r["messages"][-1]["content"] for r in read(cfg.sft_output)] == ["ANSWER(q1)+a+b+c"]
    summary = json.loads((tmp_path / "trace.summary.json").read_text())
    assert summary["requests"]["failure_reasons"] == {"HTTP 400": 2} and summary["failed_prompts"] == 2
    assert {r["json"]["model"] for r in openai_stub.requests} == {"fake"}
    assert "2 failed" in capsys.readouterr().err

    openai_stub.handler = lambda request: Reply(status=400)  # nothing works: exit 2, traces still written
    assert main(["cai", cfg.prompts, "--url", openai_stub.url, "--model", "fake", "--constitution", cfg.constitution,
                 "--trace-output", cfg.trace_output, "--max-retries", "0"]) == 2
    assert "every prompt failed (HTTP 400 x3)" in capsys.readouterr().err
    assert [t["failed_at"] for t in read(cfg.trace_output)] == ["initial"] * 3


def test_tiny_random_through_local_backend(tmp_path):
    """The real path: tiny-random behind LocalChatBackend (garbage text; the plumbing must hold)."""
    source = prompts_file(tmp_path, ["Say hi.", "Name a colour.", "Count to three."])
    out = {name: str(tmp_path / f"{name}.jsonl") for name in ("trace", "sft", "pairs")}
    code = main(["cai", source, "--model", "tiny-random", "--device", "cpu", "--principles", "sample:2",
                 "--max-tokens", "6", "--critique-max-tokens", "4", "--temperature", "0", "--trace-output",
                 out["trace"], "--sft-output", out["sft"], "--pairs-output", out["pairs"],
                 "--pair-mode", "judged", "--judge-max-tokens", "4"])
    assert code == 0
    traces = read(out["trace"])
    assert len(traces) == 3 and all(t["status"] == "ok" and len(t["steps"]) == 2 for t in traces)
    assert all(isinstance(s["critique"], str) and isinstance(s["revision"], str) for t in traces for s in t["steps"])
    summary = json.loads((tmp_path / "trace.summary.json").read_text())
    assert summary["model"] == "tiny-random" and summary["batches"] == 5
    assert summary["requests"]["requests"] == 3 + 3 * 4 + summary["revised_prompts"]  # + one judge call each
    assert len(read(out["sft"])) == summary["revised_prompts"]


@pytest.mark.parametrize("constitution, args, message", [
    ("principles: [a, b", [], "c.yaml: invalid YAML at line 1"),
    ("principles:\n  - name: x\n    revision: fix it\n", [],
     "c.yaml: principles[0].critique (x): missing"),
    ("principles:\n  - name: x\n    critique: ''\n    revision: fix it\n", [],
     "c.yaml: principles[0].critique (x): expected non-empty text"),
    ("principles:\n  - name: x\n    critique: c\n    revision: r\n    weight: 2\n", [],
     "c.yaml: principles[0].weight: unknown key"),
    ("principles: []\n", [], "c.yaml: principles: expected a non-empty list"),
    (CONSTITUTION, ["--principles", "sample:4"], "config field 'principles': sample:K needs 1 <= K <= 3"),
    (CONSTITUTION, ["--principles", "a,zzz"], "config field 'principles': expected all, sample:K or principle"),
    (CONSTITUTION, ["--pair-mode", "best"], "config field 'pair_mode': 'best' is not one of"),
    (CONSTITUTION, ["--pair-mode", "judged"], "config field 'pairs_output': --pair-mode judged makes pairs"),
    (CONSTITUTION, ["--judge-swap"], "config field 'pair_mode': the judge options need --pair-mode judged"),
])
def test_bad_constitution_or_flags_exit_2(tmp_path, capsys, constitution, args, message):
    source = prompts_file(tmp_path, ["q"])
    code = main(["cai", source, "--model", "tiny-random", "--constitution", write(tmp_path / "c.yaml", constitution),
                 "--trace-output", str(tmp_path / "t.jsonl"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("posttrain cai: error: config field '") and message in err
    assert err.count("\n") == 1 and not (tmp_path / "t.jsonl").exists()


def test_bad_prompts_and_missing_outputs_exit_2(tmp_path, capsys):
    source = write(tmp_path / "prompts.jsonl", json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    assert main(["cai", source, "--model", "tiny-random", "--trace-output", str(tmp_path / "t.jsonl")]) == 2
    assert "prompts.jsonl:2: no prompt found" in capsys.readouterr().err
    assert main(["cai", source, "--model", "tiny-random"]) == 2
    assert "config field 'sft_output': give at least one of" in capsys.readouterr().err
    assert main(["cai", source, "--constitution", "nonesuch", "--sft-output", "x.jsonl"]) == 2
    assert "unknown constitution 'nonesuch'" in capsys.readouterr().err
