"""Found by trying posttrain as a new user coming from TRL would (issues 15 and 16): each test
failed before its fix."""
from __future__ import annotations

import json

import pytest

from posttrain.cli import main
from posttrain.config import from_mapping
from posttrain.errors import ConfigError
from posttrain.train.dpo import DPOConfig


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --- a TRL config with several options posttrain lacks: all named at once, not one run per option ----------------

def test_a_trl_yaml_with_several_options_without_equivalent_names_them_all(tmp_path):
    trl = {"model_name_or_path": "tiny-random", "max_prompt_length": 128, "push_to_hub": True,
           "hub_model_id": "me/model", "frobnicate": 1, "learning_rate": 5e-6}
    with pytest.raises(ConfigError) as caught:
        from_mapping(DPOConfig, trl, source="trl.yaml")
    message = str(caught.value)
    assert message.startswith("trl.yaml: config field 'max_prompt_length': no posttrain equivalent")
    assert "(and 3 more: 'push_to_hub': no posttrain equivalent" in message
    assert "'hub_model_id':" in message and "'frobnicate': unknown field" in message


def test_a_trl_command_line_with_several_options_without_equivalent_is_one_line(tmp_path, capsys):
    code = main(["dpo", "--model_name_or_path", "tiny-random", "--dataset_name", "x.jsonl", "--max_prompt_length",
                 "128", "--push_to_hub", "--deepspeed", "ds.json", "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "'max_prompt_length': no posttrain equivalent" in err and "(and 2 more: 'push_to_hub'" in err
    assert "'deepspeed': no posttrain equivalent: use --distributed zero2 or zero3" in err
    assert not (tmp_path / "run").exists()


# --- Intel/orca_dpo_pairs and distilabel pairs: the prompt is `question` / `input` / `instruction` -------------------

ORCA = [{"system": "You are an AI assistant.", "question": "What is 2+2?", "chosen": "4", "rejected": "5"},
        {"system": "", "question": "Name a colour.", "chosen": "Blue.", "rejected": "Seven."}]
DISTILABEL = [{"system": "", "input": "What is 3+3?", "chosen": "6", "rejected": "7", "generations": ["6", "7"],
               "status": "tie", "chosen_score": 9.0, "in_gsm8k_train": False}]
ALPACA_PAIRS = [{"instruction": "Add the numbers.", "input": "2 and 2", "chosen": "4", "rejected": "5"}]


def test_orca_dpo_pairs_distilabel_and_alpaca_pairs_are_preference_data(tmp_path, capsys):
    from posttrain.data import load_records
    from posttrain.records import PreferencePair

    orca = load_records(write_jsonl(tmp_path / "orca.jsonl", ORCA))
    assert all(isinstance(r, PreferencePair) for r in orca)
    assert orca[0].prompt == [{"role": "system", "content": "You are an AI assistant."},
                              {"role": "user", "content": "What is 2+2?"}]
    assert orca[1].prompt == [{"role": "user", "content": "Name a colour."}] and orca[1].extra == {}
    (pair,) = load_records(write_jsonl(tmp_path / "distilabel.jsonl", DISTILABEL))
    assert pair.prompt == [{"role": "user", "content": "What is 3+3?"}] and pair.extra["status"] == "tie"
    (pair,) = load_records(write_jsonl(tmp_path / "alpaca_pairs.jsonl", ALPACA_PAIRS))
    assert pair.prompt == [{"role": "user", "content": "Add the numbers.\n\n2 and 2"}]
    code = main(["dpo", "--model", "tiny-random", "--data", str(tmp_path / "orca.jsonl"), "--max-steps", "1",
                 "--batch-size", "2", "--output-dir", str(tmp_path / "dpo"), "--no-progress"])
    assert code == 0, capsys.readouterr().err


# --- bad files: a 5,000-digit number, a CSV header naming a column twice, a closed pipe -------------------------------

def test_a_number_too_long_for_python_is_a_located_error_not_a_traceback(tmp_path, capsys):
    line = '{"prompt": "a", "chosen": "b", "rejected": "c", "margin": ' + "9" * 5000 + "}\n"
    for name in ("huge.jsonl", "huge.json"):
        path = tmp_path / name
        path.write_text(line if name.endswith("l") else "[" + line.strip() + "]")
        assert main(["data", "check", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}:1: malformed JSON: a number too long to read" in err


def test_a_csv_header_with_a_repeated_column_is_refused(tmp_path, capsys):
    path = tmp_path / "dup.csv"
    path.write_text("prompt,prompt,completion\nfirst,second,answer\n")
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"posttrain data check: error: {path}:1: field 'prompt': this column appears twice in the header "
                   "(the last one would silently win); rename or drop one\n")


def test_a_closed_output_pipe_ends_quietly(monkeypatch, capsys):
    import sys
    import types

    from posttrain import cli

    module = types.ModuleType("posttrain_test_pipe")

    def run(argv):
        raise BrokenPipeError(32, "Broken pipe")

    module.run = run
    monkeypatch.setitem(sys.modules, "posttrain_test_pipe", module)
    monkeypatch.setitem(cli.COMMANDS, "pipe-test", ("posttrain_test_pipe:run", "test"))
    redirected = []
    monkeypatch.setattr(cli.os, "dup2", lambda *args: redirected.append(args))  # keep pytest's stdout (-s)
    assert cli.main(["pipe-test"]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name, text, field", [
    ("sur.jsonl", '{"prompt": "a\\ud800 b", "completion": "c"}\n', "prompt"),
    ("sur2.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x\\udc00"}]}\n',
     "messages[1].content"),
    ("sur.json", '[{"prompt": "ok", "completion": "fine"}, {"prompt": "a", "completion": "\\uDBFF"}]', "completion"),
])
def test_a_lone_surrogate_escape_is_refused_where_it_is_read(tmp_path, capsys, name, text, field):
    """It used to pass `data check`, then crash the tokenizer (TypeError) or any writer (UnicodeEncodeError)."""
    path = tmp_path / name
    path.write_text(text)
    line = 2 if name == "sur.json" else 1
    for argv in (["data", "check", str(path)], ["data", "dedup", str(path), "--output", str(tmp_path / "out.jsonl")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{path}:{line}: field '{field}': holds a lone UTF-16 surrogate" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_an_escaped_surrogate_pair_is_an_ordinary_character(tmp_path):
    from posttrain.data import load_records

    (record,) = load_records(write_jsonl(tmp_path / "emoji.jsonl", [{"prompt": "hi \ud83d\ude00", "completion": "ok"}]))
    assert record.messages[0]["content"] == "hi \U0001F600"


# --- an output path that is a directory (or under a file): one line, before any work ---------------------------------

@pytest.mark.parametrize("command", [
    ["data", "dedup", "{data}", "--output", "{out}"],
    ["data", "filter", "{data}", "--output", "{out}"],
    ["data", "dedup", "{data}", "--report", "{out}"],
    ["judge", "{data}", "--output", "{out}", "--judge-url", "http://127.0.0.1:9", "--judge-model", "m",
     "--max-retries", "0"],
    ["redteam", "--target", "tiny-random", "--limit", "1", "--pairs-output", "{out}", "--output-dir", "{run}"],
])
@pytest.mark.parametrize("where", ["a directory", "under a file"])
def test_an_output_that_cannot_be_a_file_is_one_line(tmp_path, capsys, command, where):
    """It was an IsADirectoryError / NotADirectoryError traceback, after the work (redteam had written
    its transcript already)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    out = tmp_path / "outdir" if where == "a directory" else tmp_path / "pairs.jsonl" / "out.jsonl"
    (tmp_path / "outdir").mkdir()
    argv = [part.format(data=data, out=out, run=tmp_path / "run") for part in command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(out) in err
    assert ("is a directory" if where == "a directory" else "is a file, not a directory") in err
    assert not (tmp_path / "run").exists()


def test_judge_creates_the_folder_of_its_output(tmp_path):
    from posttrain.judge.command import JudgeConfig, run_judge
    from posttrain.rollout.chat import CallableBackend

    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    cfg = JudgeConfig(input=data, output=str(tmp_path / "new" / "deeper" / "out.jsonl"))
    run_judge(cfg, backend=CallableBackend(lambda messages: "Winner: A", name="stub"), log=lambda _: None)
    assert (tmp_path / "new" / "deeper" / "out.jsonl").is_file()  # was FileNotFoundError on out.jsonl.partial


# --- common TRL option names that got "unrecognized arguments" with no hint ------------------------------------------

@pytest.mark.parametrize("argv, check", [
    (["--max_seq_length", "64"], lambda cfg: cfg.max_length == 64),
    (["--completion_only_loss", "true"], lambda cfg: True),
    (["--assistant_only_loss"], lambda cfg: True),
    (["--disable_tqdm", "true"], lambda cfg: cfg.progress is False),
    (["--packing_strategy", "bfd", "--packing"], lambda cfg: cfg.packing),
    (["--dataset_num_proc", "8"], lambda cfg: True),
    (["--use_liger_kernel", "true"], lambda cfg: True),
])
def test_more_trl_names_run_with_the_same_meaning(argv, check):
    from posttrain.config import parse_config
    from posttrain.train.sft import SFTConfig

    assert check(parse_config(SFTConfig, ["--data", "x.jsonl", *argv]))


@pytest.mark.parametrize("argv, message", [
    (["--completion_only_loss", "false"], "write the rows as plain `text`"),
    (["--packing_strategy", "wrapped"], "'wrapped' has no equivalent"),
    (["--adam_beta1", "0.8"], "AdamW uses PyTorch's defaults"),
    (["--neftune_noise_alpha", "5"], "no NEFTune"),
    (["--model_init_kwargs", "{}"], "--dtype and --attn-implementation"),
])
def test_more_trl_names_without_equivalent_say_what_to_use(argv, message, capsys):
    assert main(["sft", *argv, "--data", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"config field '{argv[0][2:]}'" in err and message in err


# --- posttrain score on the public preference shapes dpo reads -------------------------------------------------------

def test_score_reads_pairs_given_as_whole_conversations(tmp_path, monkeypatch, capsys):
    """hh-rlhf transcripts and ultrafeedback_binarized's conversations were 'field 'chosen': expected text'."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from posttrain.models import load_tokenizer
    from posttrain.models.loading import tiny_checkpoint

    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_checkpoint(seed=0)), num_labels=1)
    tokenizer = load_tokenizer("tiny-random")
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    turns = [{"role": "user", "content": "What is 2+2?"}]
    rows = [{"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
            {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5"},
            {"prompt": "What is 2+2?", "chosen": turns + [{"role": "assistant", "content": "4"}],
             "rejected": turns + [{"role": "assistant", "content": "5"}], "score_chosen": 9.0}]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert main(["score", "--model", str(tmp_path / "rm"), "--input", data, "--output", str(tmp_path / "out.jsonl"),
                 "--device", "cpu", "--no-progress"]) == 0, capsys.readouterr().err
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    first = (scored[0]["chosen_score"], scored[0]["rejected_score"])
    assert first[0] != first[1]
    for row in scored[1:]:
        assert (row["chosen_score"], row["rejected_score"]) == pytest.approx(first, abs=1e-5)
    assert scored[2]["score_chosen"] == 9.0  # other fields kept


@pytest.mark.parametrize("row", [
    {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5"},
    {"system": "Be brief.", "question": "What is 2+2?", "chosen": "4", "rejected": "5"},
])
def test_judge_reads_hh_rlhf_and_orca_pairs(tmp_path, row):
    """Both were "field 'prompt': missing"."""
    from posttrain.judge.inputs import read_items

    path = write_jsonl(tmp_path / "pairs.jsonl", [row])
    ((line, (item,)),) = read_items(path, "pairwise")
    assert (line, item.response_a, item.response_b) == (1, "4", "5")
    assert item.prompt[-1] == {"role": "user", "content": "What is 2+2?"} and item.extra["reference_winner"] == "A"


def test_a_mapping_flag_naming_a_key_twice_is_refused(capsys):
    """`--columns prompt=a prompt=b` read the column b, silently."""
    assert main(["data", "check", "x.jsonl", "--columns", "prompt=a", "prompt=b"]) == 2
    assert capsys.readouterr().err == ("posttrain data check: error: config field 'columns': 'prompt' is given twice "
                                       "(prompt=a and prompt=b)\n")


# --- openbmb/UltraFeedback as published: "field 'output': missing" (read as an Alpaca row) --------------------------

UF_RAW = {"source": "evol_instruct", "instruction": "Say hi.", "models": ["m1", "m2", "m3"],
          "completions": [{"model": "m1", "response": "Hi!", "overall_score": 7.5, "annotations": {}},
                          {"model": "m2", "response": "Go away.", "overall_score": 2.0},
                          {"model": "m3", "response": "Hello there.", "overall_score": 6}],
          "correct_answers": [], "incorrect_answers": []}


def test_raw_ultrafeedback_rows_are_rankings_by_overall_score(tmp_path, capsys):
    from posttrain.data import load_records
    from posttrain.records import Ranked

    (record,) = load_records(write_jsonl(tmp_path / "uf.jsonl", [UF_RAW]))
    assert isinstance(record, Ranked) and record.prompt == [{"role": "user", "content": "Say hi."}]
    assert (record.responses, record.scores) == (["Hi!", "Go away.", "Hello there."], [7.5, 2.0, 6.0])
    assert record.extra["models"] == ["m1", "m2", "m3"] and record.extra["source"] == "evol_instruct"
    tie = {**UF_RAW, "completions": [{**c, "overall_score": 5} for c in UF_RAW["completions"]]}
    path = write_jsonl(tmp_path / "tie.jsonl", [UF_RAW, tie])
    assert main(["data", "check", path]) == 2
    assert capsys.readouterr().err == (f"posttrain data check: error: {path}:2: field 'completions[].overall_score': "
                                       "all scores are equal (5): no response is better than another\n")


@pytest.mark.parametrize("text, name", [("prompt;completion\na;b\n", "semicolons"),
                                        ("prompt\tcompletion\na\tb\n", "tabs")])
def test_a_csv_separated_otherwise_says_so(tmp_path, capsys, text, name):
    """It was "unknown shape (fields: prompt;completion)"."""
    path = tmp_path / "export.csv"
    path.write_text(text)
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:1: the header is one column" in err and f"separated by {name}" in err


def test_kto_does_not_print_a_nan_margin_when_the_last_step_has_one_kind(tmp_path, capsys):
    """`margin nan` read as a divergence; the step simply held desirable examples only."""
    rows = [{"prompt": f"Q{i}?", "completion": f"good {i}", "label": True} for i in range(2)]
    rows += [{"prompt": f"Q{i}?", "completion": f"bad {i}", "label": False} for i in range(2)]
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    assert main(["kto", "--model", "tiny-random", "--data", data, "--max-steps", "1", "--batch-size", "2",
                 "--output-dir", str(tmp_path / "run"), "--no-progress", "--seed", "0"]) == 0
    out = capsys.readouterr()
    summary = next(line for line in (out.out + out.err).splitlines() if line.startswith("done:"))
    assert "nan" not in summary.split("; model in")[0]
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert ("rewards/margins" in last) == ("margin -" not in summary)


def test_an_unclosed_csv_quote_running_past_the_field_limit_names_where_the_row_starts(tmp_path, capsys):
    """It said "malformed CSV: field larger than field limit (16777216)" at the line where the limit was hit."""
    path = tmp_path / "unclosed.csv"
    with path.open("w") as handle:
        handle.write('prompt,completion\n"a","never closed\n')
        handle.write(("x" * 63 + "\n") * 270_000)  # 17 MB: past the 16 MiB default limit
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{path}:2: a quoted field runs past line" in err and "unclosed quote?" in err


# --- posttrain serve: a long chat stays within the model's window -----------------------------------------------------

def test_a_long_chat_keeps_its_latest_turns_within_the_model_window(monkeypatch):
    """A conversation past the window was sent whole (9,963 tokens to a 1,024-position model)."""
    from posttrain.serve.feedback import ModelBackend

    backend = ModelBackend("tiny-random", max_new_tokens=4, temperature=0)
    backend.load()
    seen = []

    def generate(input_ids, attention_mask=None, **kwargs):
        seen.append(input_ids[0].tolist())
        return input_ids

    monkeypatch.setattr(backend._model, "generate", generate)
    limit = backend.context_limit()
    assert limit == backend._model.config.max_position_embeddings - 4
    history = [{"role": "system", "content": "Be kind."}]
    for i in range(6):
        history += [{"role": "user", "content": f"question {i} " + "hello world " * 15},
                    {"role": "assistant", "content": f"answer {i} " + "sure thing " * 15}]
    history.append({"role": "user", "content": "LAST QUESTION, short."})
    assert len(backend._tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"]) > limit
    backend.reply(history)
    text = backend._tokenizer.decode(seen[-1])
    assert len(seen[-1]) <= limit
    assert text.count("LAST QUESTION") == 1 and "Be kind." in text and "question 0 " not in text
    assert "question 5 " in text  # the latest turns stay
    backend.reply([{"role": "user", "content": "END " + "word " * 3000 + "TAIL"}])  # one turn, too long alone
    assert len(seen[-1]) == limit and backend._tokenizer.decode(seen[-1]).rstrip().endswith("assistant")
