"""`posttrain judge` end to end: over a real local HTTP server, on tiny-random, resume, bad input."""
from __future__ import annotations

import json

import pytest

from openai_stub import OpenAIStub, Reply, backend_handler
from posttrain.cli import main
from posttrain.judge.command import JudgeConfig, run_judge
from posttrain.rollout.chat import CallableBackend


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read_rows(path):
    return [json.loads(line) for line in open(path)]


def prefers_good(request):
    """Scripted judge: picks whichever shown answer contains GOOD (so it is position-consistent)."""
    text = request["json"]["messages"][-1]["content"]
    first = text.split("### Answer A\n")[1].split("### Answer B")[0]
    second = text.split("### Answer B\n")[1]
    return "Winner: A" if "GOOD" in first else '{"winner": "B"}' if "GOOD" in second else "tie"


PAIRS = [
    {"id": "p1", "prompt": "Capital of France?", "response_a": "GOOD: Paris", "response_b": "Lyon"},
    {"id": "p2", "prompt": [{"role": "user", "content": "2+2?"}], "chosen": "GOOD 4", "rejected": "5"},
    {"id": "p3", "prompt": "Colour of the sky?", "response_a": "green", "response_b": "GOOD: blue"},
    {"id": "p4", "prompt": "Say hi", "response_a": "hi", "response_b": "hello"},
]


def test_pairwise_swap_over_http(tmp_path, openai_stub, monkeypatch, capsys):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-cli-secret")
    openai_stub.handler = prefers_good
    source = write_rows(tmp_path / "pairs.jsonl", PAIRS)
    code = main(["judge", "--input", source, "--mode", "pairwise", "--swap", "--judge-url", openai_stub.url,
                 "--judge-model", "stub-judge", "--api-key-env", "JUDGE_TEST_KEY", "--backoff", "0.001",
                 "--chunk-size", "3"])
    assert code == 0
    rows = read_rows(tmp_path / "pairs.judged.jsonl")
    assert [r["id"] for r in rows] == ["p1", "p2", "p3", "p4"]
    assert [r["winner"] for r in rows] == ["A", "A", "B", "tie"]
    assert rows[1]["response_a"] == "GOOD 4" and rows[1]["reference_winner"] == "A"
    assert rows[0]["prompt"] == [{"role": "user", "content": "Capital of France?"}] and rows[0]["judge"] == "stub-judge"
    assert all(r["judge_consistent"] is True for r in rows)
    assert len(openai_stub.requests) == 8
    assert {r["headers"]["authorization"] for r in openai_stub.requests} == {"Bearer sk-cli-secret"}
    summary = json.loads((tmp_path / "pairs.judged.summary.json").read_text())
    assert (summary["A"], summary["B"], summary["tie"], summary["unparseable"], summary["failed"]) == (2, 1, 1, 0, 0)
    assert summary["position_consistency"] == 1.0 and summary["reference_agreement"] == 1.0
    assert summary["requests"] == 8 and summary["failed_requests"] == 0
    assert not (tmp_path / "pairs.judged.jsonl.partial").exists()
    out = capsys.readouterr().out
    assert "position consistency 1.000" in out and "sk-cli-secret" not in out


def test_failures_and_garbage_are_counted(tmp_path, openai_stub):
    """p1: fine; p2: a 500 then success (retried); p3: garbage text; p4: always 503 -> failed."""
    seen_math = []

    def handler(request):
        text = request["json"]["messages"][-1]["content"]
        if "2+2?" in text:
            seen_math.append(1)
            return Reply(status=500) if len(seen_math) == 1 else "[[A]]"
        if "sky" in text:
            return "I cannot decide, both have merits."
        if "Say hi" in text:
            return Reply(status=503)
        return "[[A]]"

    openai_stub.handler = handler
    source = write_rows(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "verdicts.jsonl"
    code = main(["judge", source, "--output", str(out), "--judge-url", openai_stub.url, "--judge-model", "m",
                 "--max-retries", "1", "--backoff", "0.001", "--concurrency", "2"])
    assert code == 0
    rows = read_rows(out)
    assert [r["judge_status"] for r in rows] == ["ok", "ok", "unparseable", "failed"]
    assert [r.get("winner") for r in rows] == ["A", "A", None, None]  # None fields are left out of records
    summary = json.loads((tmp_path / "verdicts.summary.json").read_text())
    assert (summary["unparseable"], summary["failed"], summary["tie"]) == (1, 1, 0)
    assert summary["failed_requests"] == 1 and summary["retries"] == 2
    assert summary["failure_reasons"] == {"HTTP 503": 1}


def test_pointwise_responses_list(tmp_path, openai_stub):
    openai_stub.handler = lambda request: "Score: 8/10" if "Paris" in request["json"]["messages"][-1]["content"] \
        else "[[2]]"
    source = write_rows(tmp_path / "resp.jsonl", [
        {"prompt": "Capital of France?", "responses": ["Paris", "Rome"], "models": ["m1", "m2"]},
        {"prompt": "Capital of Italy?", "response": "Paris?"},
    ])
    assert main(["judge", source, "--mode", "pointwise", "--judge-url", openai_stub.url, "--judge-model", "m"]) == 0
    rows = read_rows(tmp_path / "resp.judged.jsonl")
    assert [(r["response_a"], r["score"], r.get("response_index")) for r in rows] == [
        ("Paris", 8.0, 0), ("Rome", 2.0, 1), ("Paris?", 8.0, None)]
    assert rows[0]["models"] == ["m1", "m2"]
    summary = json.loads((tmp_path / "resp.judged.summary.json").read_text())
    assert summary["mean_score"] == pytest.approx(6.0) and summary["ok"] == 3


def test_every_request_failing_is_an_error_exit(tmp_path, openai_stub, capsys):
    openai_stub.handler = lambda request: Reply(status=404)
    source = write_rows(tmp_path / "pairs.jsonl", PAIRS[:2])
    code = main(["judge", source, "--judge-url", openai_stub.url, "--judge-model", "m"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("posttrain judge: error: every judge request failed (HTTP 404 x2)")
    assert (tmp_path / "pairs.judged.jsonl").exists()


def test_resume_skips_finished_rows_and_redoes_failed_ones(tmp_path):
    source = write_rows(tmp_path / "pairs.jsonl", PAIRS)
    cfg = JudgeConfig(input=source, chunk_size=1)
    script = iter(["[[B]]", RuntimeError("503"), KeyboardInterrupt()])

    def flaky(messages):
        step = next(script)
        if isinstance(step, BaseException):
            raise step
        return step

    with pytest.raises(KeyboardInterrupt):
        run_judge(cfg, backend=CallableBackend(flaky, name="fake"), log=lambda *a: None)
    partial = tmp_path / "pairs.judged.jsonl.partial"
    assert len(partial.read_text().splitlines()) == 3  # header, p1 (ok), p2 (failed)

    calls = []
    resumed = CallableBackend(lambda m: calls.append(m) or "[[A]]", name="fake")
    summary = run_judge(cfg, backend=resumed, log=lambda *a: None)
    assert len(calls) == 3  # p2 (its request had failed), p3, p4; p1 was kept
    assert summary["resumed_rows"] == 1 and summary["failed"] == 0
    rows = read_rows(tmp_path / "pairs.judged.jsonl")
    assert [r["winner"] for r in rows] == ["B", "A", "A", "A"] and not partial.exists()


def test_partial_from_other_settings_is_refused(tmp_path, capsys):
    source = write_rows(tmp_path / "pairs.jsonl", PAIRS)
    (tmp_path / "pairs.judged.jsonl.partial").write_text(json.dumps({"partial_of": {"mode": "pointwise"}}) + "\n")
    with pytest.raises(Exception, match="written with other settings"):
        run_judge(JudgeConfig(input=source), backend=CallableBackend(lambda m: "[[A]]"), log=lambda *a: None)
    summary = run_judge(JudgeConfig(input=source, resume=False), backend=CallableBackend(lambda m: "[[A]]"),
                        log=lambda *a: None)
    assert summary["A"] == 4


@pytest.mark.parametrize("rows, args, message", [
    ([{"prompt": "q", "response_a": "x"}], [], "pairs.jsonl:1: field 'response_b': missing"),
    ([{"prompt": "q", "response_a": "x", "response_b": "y"}, {"response_a": "x", "response_b": "y"}], [],
     "pairs.jsonl:2: field 'prompt': missing"),
    ([{"prompt": 3, "chosen": "x", "rejected": "y"}], [], "pairs.jsonl:1: field 'prompt': expected a string"),
    ([{"prompt": "q", "text": "x"}], [], "pairs.jsonl:1: a pairwise row needs response_a and response_b"),
    ([{"prompt": "q", "responses": []}], ["--mode", "pointwise"], "field 'responses': expected a non-empty list"),
    ([{"prompt": "q", "response_a": "x", "response_b": "y"}], ["--judge-url", "http://127.0.0.1:9"],
     "config field 'judge_model': required with --judge-url"),
    ([{"prompt": "q", "response_a": "x", "response_b": "y"}], ["--mode", "ranking"], "config field 'mode'"),
    ([{"prompt": "q", "response_a": "x", "response_b": "y"}], ["--template", "BADTPL"],
     "unknown placeholder {verdict} in 'user'"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, rows, args, message):
    source = write_rows(tmp_path / "pairs.jsonl", rows)
    bad_template = tmp_path / "bad.yaml"
    bad_template.write_text("mode: pairwise\nuser: '{answer_a} {answer_b} {verdict}'\n")
    args = [str(bad_template) if a == "BADTPL" else a for a in args]
    code = main(["judge", "--input", source, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("posttrain judge: error: ") and "\n" not in err
    assert message in err
    assert not (tmp_path / "pairs.judged.jsonl").exists()


def test_reward_model_flag_uses_reward_scorer(tmp_path, monkeypatch):
    """--reward-model wires posttrain.rollout.score.RewardScorer in (replaced here by a fake)."""
    import posttrain.rollout.score as score_module

    class FakeScorer:
        def __init__(self, model_dir, **kwargs):
            assert model_dir == "runs/my-rm"

        def score(self, prompts, responses):
            return [float("GOOD" in r) for r in responses]

    monkeypatch.setattr(score_module, "RewardScorer", FakeScorer)
    source = write_rows(tmp_path / "pairs.jsonl", PAIRS)
    assert main(["judge", source, "--reward-model", "runs/my-rm", "--tie-threshold", "0.5"]) == 0
    rows = read_rows(tmp_path / "pairs.judged.jsonl")
    assert [r["winner"] for r in rows] == ["A", "A", "B", "tie"]
    assert rows[0]["judge"] == "reward_model(my-rm)" and rows[0]["score_a"] == 1.0
    code = main(["judge", source, "--reward-model", "runs/my-rm", "--swap"])
    assert code == 2


def test_local_tiny_random_end_to_end(tmp_path, capsys):
    """The local path runs: chat template, left-padded batched greedy generation, parsing (garbage)."""
    source = write_rows(tmp_path / "pairs.jsonl", [
        {"prompt": "2+2?", "response_a": "4", "response_b": "5"},
        {"prompt": "Capital of France?", "response_a": "Paris", "response_b": "Rome, probably"},
    ])
    code = main(["judge", source, "--judge-model", "tiny-random", "--swap", "--max-tokens", "6",
                 "--batch-size", "4", "--device", "cpu"])
    assert code == 0
    rows = read_rows(tmp_path / "pairs.judged.jsonl")
    assert len(rows) == 2 and all(r["judge"] == "tiny-random" for r in rows)
    assert all(isinstance(r["reasoning"], str) and isinstance(r["judge_reasoning_swapped"], str) for r in rows)
    summary = json.loads((tmp_path / "pairs.judged.summary.json").read_text())
    assert summary["requests"] == 4 and summary["failed_requests"] == 0
    assert summary["A"] + summary["B"] + summary["tie"] + summary["unparseable"] == 2


def test_http_stub_serving_a_local_model(tmp_path):
    """The stub can serve real model output: tiny-random behind the OpenAI protocol."""
    from posttrain.rollout.chat import LocalChatBackend

    model_backend = LocalChatBackend.from_name("tiny-random", device="cpu")
    source = write_rows(tmp_path / "resp.jsonl", [{"prompt": "2+2?", "responses": ["4", "five"]}])
    with OpenAIStub(handler=backend_handler(model_backend)) as stub:
        assert main(["judge", source, "--mode", "pointwise", "--judge-url", stub.url, "--judge-model", "tiny",
                     "--max-tokens", "6"]) == 0
    direct = model_backend.complete([stub.requests[0]["json"]["messages"]], max_tokens=6)
    rows = read_rows(tmp_path / "resp.judged.jsonl")
    assert rows[0]["reasoning"] == direct[0]  # the HTTP path returned exactly what the model generated
    assert model_backend.stats.requests == 3


@pytest.mark.slow
def test_trained_reward_model_as_judge(tmp_path):
    """Train a tiny reward model for two steps with `posttrain rm`, then judge with it."""
    prefs = write_rows(tmp_path / "prefs.jsonl", [{"prompt": p["prompt"], "chosen": "yes", "rejected": "no"}
                                                  for p in PAIRS])
    assert main(["rm", "--model", "tiny-random", "--data", prefs, "--max-steps", "2", "--batch-size", "2",
                 "--output-dir", str(tmp_path / "rm"), "--no-progress"]) == 0
    source = write_rows(tmp_path / "pairs.jsonl", PAIRS)
    assert main(["judge", source, "--reward-model", str(tmp_path / "rm"), "--device", "cpu"]) == 0
    rows = read_rows(tmp_path / "pairs.judged.jsonl")
    assert len(rows) == 4 and all(r["winner"] in ("A", "B", "tie") for r in rows)
    for r in rows:  # the verdict follows the two scores
        assert r["winner"] == ("A" if r["score_a"] > r["score_b"] else "B" if r["score_b"] > r["score_a"] else "tie")
