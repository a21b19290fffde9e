"""Public dataset shapes load unchanged: hh-rlhf, ultrafeedback_binarized (with its train_prefs/test_prefs
splits as a saved DatasetDict and as hub-style parquet files), dolly, gsm8k, raw text, pandas CSV, and any
other schema through a column mapping. The rows below are written the way those datasets write them."""
from __future__ import annotations

import json

import pytest

from data_files import data_check, write_jsonl
from posttrain.cli import main
from posttrain.data import load_records, read_rows
from posttrain.data.formats import parse_row
from posttrain.data.prompts import load_prompts
from posttrain.errors import InputError
from posttrain.records import Conversation, PreferencePair, Prompt, Text

# Anthropic/hh-rlhf: two full transcripts, the shared prompt implicit.
HH = [
    {"chosen": "\n\nHuman: What are some cuss words in english?\n\nAssistant: Here's an incomplete list.\n\n"
               "Human: What's your favorite one?\n\nAssistant: I haven't even thought about it.",
     "rejected": "\n\nHuman: What are some cuss words in english?\n\nAssistant: Here's an incomplete list.\n\n"
                 "Human: What's your favorite one?\n\nAssistant: Ass."},
    {"chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast, then knead.",
     "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Buy it."},
]

# HuggingFaceH4/ultrafeedback_binarized: prompt text, chosen/rejected as full conversations, scores and messages.
UF = [
    {"prompt": "Write a haiku about rain.", "prompt_id": "a1b2",
     "chosen": [{"role": "user", "content": "Write a haiku about rain."},
                {"role": "assistant", "content": "Soft rain on the roof\nthe garden drinks in silence\nclouds move on at dusk"}],
     "rejected": [{"role": "user", "content": "Write a haiku about rain."},
                  {"role": "assistant", "content": "Rain is wet."}],
     "messages": [{"role": "user", "content": "Write a haiku about rain."},
                  {"role": "assistant", "content": "Soft rain on the roof\nthe garden drinks in silence\nclouds move on at dusk"}],
     "score_chosen": 8.5, "score_rejected": 3.0},
    {"prompt": "What is 7 * 6?", "prompt_id": "c3d4",
     "chosen": [{"role": "user", "content": "What is 7 * 6?"}, {"role": "assistant", "content": "42"}],
     "rejected": [{"role": "user", "content": "What is 7 * 6?"}, {"role": "assistant", "content": "36"}],
     "messages": [{"role": "user", "content": "What is 7 * 6?"}, {"role": "assistant", "content": "42"}],
     "score_chosen": 10.0, "score_rejected": 2.0},
]

DOLLY = [
    {"instruction": "When did Virgin Australia start operating?",
     "context": "Virgin Australia commenced services on 31 August 2000 as Virgin Blue.",
     "response": "Virgin Australia started on 31 August 2000 as Virgin Blue.", "category": "closed_qa"},
    {"instruction": "Which is a species of fish? Tope or Rope", "context": "", "response": "Tope",
     "category": "classification"},
]

GSM8K = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
               "altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                 "How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
               "$<<0.2*50=10>>10.\n#### 10"},
]

TEXT = [{"text": "The mitochondrion is the powerhouse of the cell. It makes ATP.", "meta": {"source": "wiki"}},
        {"text": "Once upon a time there was a small village by the sea."}]


# --- hh-rlhf -----------------------------------------------------------------------------------


def test_hh_rlhf_transcripts_split_into_a_multi_turn_prompt_and_two_replies(tmp_path):
    pairs = load_records(write_jsonl(tmp_path / "hh.jsonl", HH), kind="preference")
    assert pairs[0] == PreferencePair(
        prompt=[{"role": "user", "content": "What are some cuss words in english?"},
                {"role": "assistant", "content": "Here's an incomplete list."},
                {"role": "user", "content": "What's your favorite one?"}],
        chosen="I haven't even thought about it.", rejected="Ass.")
    assert pairs[1].prompt == [{"role": "user", "content": "How do I bake bread?"}]
    assert (pairs[1].chosen, pairs[1].rejected) == ("Mix flour, water, salt and yeast, then knead.", "Buy it.")


def test_hh_rlhf_rows_give_rl_prompts_too(tmp_path):
    prompts = load_prompts(write_jsonl(tmp_path / "hh.jsonl", HH))
    assert prompts[1].prompt == [{"role": "user", "content": "How do I bake bread?"}]


def test_hh_rlhf_row_with_identical_transcripts_is_a_located_error():
    row = {"chosen": HH[1]["chosen"], "rejected": HH[1]["chosen"]}
    with pytest.raises(InputError, match=r"^hh.jsonl:3: field 'rejected': is identical to 'chosen'$"):
        parse_row(row, "hh.jsonl:3", "preference")


def test_hh_rlhf_as_downloaded_gzipped_split_files_in_subset_folders(tmp_path):
    import gzip

    subset = tmp_path / "hh-rlhf" / "harmless-base"
    subset.mkdir(parents=True)
    for split, rows in (("train", HH[:1]), ("test", HH[1:])):
        with gzip.open(subset / f"{split}.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.rejected for p in load_records(subset, kind="preference")] == ["Ass."]  # train by default
    assert [p.rejected for p in load_records(f"{subset}:test", kind="preference")] == ["Buy it."]
    with pytest.raises(InputError, match=r"hh-rlhf: holds several data folders \(harmless-base\); pass one of them, "
                                         r"e.g. .*hh-rlhf/harmless-base$"):
        load_records(tmp_path / "hh-rlhf")
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(InputError, match=r"broken.jsonl.gz:1: cannot decompress: Not a gzipped file"):
        load_records(broken)


# --- ultrafeedback_binarized ---------------------------------------------------------------------


def test_ultrafeedback_binarized_rows_use_the_shared_prefix_and_keep_the_scores(tmp_path):
    pairs = load_records(write_jsonl(tmp_path / "uf.jsonl", UF), kind="preference")
    assert pairs[0].prompt == [{"role": "user", "content": "Write a haiku about rain."}]
    assert pairs[0].chosen.startswith("Soft rain on the roof") and pairs[0].rejected == "Rain is wet."
    assert (pairs[1].chosen, pairs[1].rejected) == ("42", "36")
    assert pairs[1].extra["score_chosen"] == 10.0 and pairs[1].extra["prompt_id"] == "c3d4"


def test_ultrafeedback_prompt_that_contradicts_the_conversation_is_an_error():
    row = {**UF[1], "prompt": "What is 6 * 7?"}
    with pytest.raises(InputError, match="field 'prompt': differs from every user turn of the conversation that "):
        parse_row(row, "uf.jsonl:2", "preference")


def test_multi_turn_pairs_whose_prompt_is_the_first_turn_and_duplicate_prompt_fields():
    # argilla/distilabel-capybara-dpo-7k-binarized: `prompt` is the first user turn of a longer shared prefix;
    # mlabonne/orpo-dpo-mix-40k: `prompt` and `question` hold the same text.
    turns = [{"role": "user", "content": "Plan a trip."}, {"role": "assistant", "content": "Where to?"},
             {"role": "user", "content": "Rome."}]
    row = {"prompt": "Plan a trip.", "question": "Plan a trip.",
           "chosen": turns + [{"role": "assistant", "content": "Day 1: the Colosseum."}],
           "rejected": turns + [{"role": "assistant", "content": "No."}]}
    _, pair = parse_row(row, "capybara.jsonl:1", "preference")
    assert pair.prompt == turns and (pair.chosen, pair.rejected) == ("Day 1: the Colosseum.", "No.")


def test_ultrafeedback_train_sft_rows_give_sft_their_messages():
    shape, conversation = parse_row(UF[1], "uf.jsonl:2", "sft")  # train_sft rows have chosen/rejected too
    assert shape == "messages" and conversation.messages == UF[1]["messages"]
    assert parse_row(UF[1], "uf.jsonl:2")[0] == "preference"  # without a kind, the first shape in the table


def save_h4_dataset_dict(path):
    import datasets

    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(UF[:1]),
                          "test_prefs": datasets.Dataset.from_list(UF[1:])}).save_to_disk(str(path))


def test_h4_dataset_dict_on_disk_with_split_and_path_colon_split(tmp_path):
    save_h4_dataset_dict(tmp_path / "uf")
    train = load_records(tmp_path / "uf", kind="preference", split="train_prefs")
    assert [p.rejected for p in train] == ["Rain is wet."]
    test = load_records(f"{tmp_path / 'uf'}:test_prefs", kind="preference")
    assert [p.rejected for p in test] == ["36"]
    with pytest.raises(InputError, match=r"several splits and none chosen \(splits: train_prefs, test_prefs\); "
                                         r"choose one with --split NAME or .*uf:NAME$"):
        load_records(tmp_path / "uf")


def test_h4_parquet_files_named_by_split_in_a_directory(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "ultrafeedback_binarized" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(UF[:1]), folder / "train_prefs-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(UF[1:]), folder / "test_prefs-00000-of-00001.parquet")
    root = tmp_path / "ultrafeedback_binarized"
    assert [p.chosen for p in load_records(root, kind="preference", split="test_prefs")] == ["42"]
    (where, _), = read_rows(f"{root}:train_prefs")
    assert where == f"{folder / 'train_prefs-00000-of-00001.parquet'}:1"


def test_cli_data_check_and_dpo_take_split(tmp_path, capsys):
    save_h4_dataset_dict(tmp_path / "uf")
    code, out, _ = data_check(capsys, tmp_path / "uf", "--split", "test_prefs")
    assert code == 0 and out.startswith(f"{tmp_path / 'uf'}: 1 rows, all valid")
    code, _, err = data_check(capsys, tmp_path / "uf", "--split", "dev")
    assert code == 2 and err.endswith("split 'dev' not found (splits: train_prefs, test_prefs); choose one with "
                                      f"--split NAME or {tmp_path / 'uf'}:NAME\n")
    # Training commands accept --split (the old error message suggested a flag they rejected).
    run = tmp_path / "run"
    code = main(["dpo", "--model", "tiny-random", "--data", str(tmp_path / "uf"), "--split", "train_prefs",
                 "--eval-data", f"{tmp_path / 'uf'}:test_prefs", "--max-steps", "1", "--batch-size", "1",
                 "--output-dir", str(run), "--no-progress"])
    assert code == 0 and (run / "final").is_dir()


# --- dolly, gsm8k, text ----------------------------------------------------------------------------


def test_dolly_rows_are_sft_conversations_with_the_context_after_the_instruction(tmp_path):
    first, second = load_records(write_jsonl(tmp_path / "dolly.jsonl", DOLLY), kind="sft")
    assert first.messages == [
        {"role": "user", "content": "When did Virgin Australia start operating?\n\n"
                                    "Virgin Australia commenced services on 31 August 2000 as Virgin Blue."},
        {"role": "assistant", "content": "Virgin Australia started on 31 August 2000 as Virgin Blue."}]
    assert first.extra["category"] == "closed_qa"
    assert second.messages[0] == {"role": "user", "content": "Which is a species of fish? Tope or Rope"}


def test_gsm8k_rows_are_sft_data_and_still_rl_prompts(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    conversation = load_records(path, kind="sft")[0]
    assert conversation == Conversation([{"role": "user", "content": GSM8K[0]["question"]},
                                         {"role": "assistant", "content": GSM8K[0]["answer"]}])
    prompt = load_prompts(path)[1]
    assert prompt == Prompt([{"role": "user", "content": GSM8K[1]["question"]}], extra={"answer": GSM8K[1]["answer"]})


@pytest.mark.parametrize("row,messages,extra", [
    ({"problem": "What is $1+1$?", "level": "Level 1", "type": "Algebra", "solution": "$1+1=\\boxed{2}$."},
     [{"role": "user", "content": "What is $1+1$?"}, {"role": "assistant", "content": "$1+1=\\boxed{2}$."}],
     {"level": "Level 1", "type": "Algebra"}),
    ({"id": "niv.242684", "system_prompt": "You are an AI assistant.", "question": "Translate 'hi' to French.",
      "response": "Salut."},
     [{"role": "system", "content": "You are an AI assistant."}, {"role": "user", "content": "Translate 'hi' to French."},
      {"role": "assistant", "content": "Salut."}], {"id": "niv.242684"}),
    ({"prompt": "Name a prime.", "response": "7", "helpfulness": 4, "correctness": 4},
     [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
     {"helpfulness": 4, "correctness": 4}),
], ids=["MATH problem/solution", "OpenOrca system_prompt/question/response", "HelpSteer prompt/response"])
def test_more_public_sft_shapes(row, messages, extra):
    _, conversation = parse_row(row, "d.jsonl:1", "sft")
    assert (conversation.messages, conversation.extra) == (messages, extra)


def test_text_rows_are_their_own_kind(tmp_path):
    records = load_records(write_jsonl(tmp_path / "text.jsonl", TEXT))
    assert records == [Text(TEXT[0]["text"], extra={"meta": {"source": "wiki"}}), Text(TEXT[1]["text"])]


def test_sft_trains_on_every_token_of_text_rows_with_packing(tmp_path, capsys):
    from posttrain.data import get_template, tokenize_conversations
    from posttrain.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-random")
    long_text = {"text": " ".join(f"word{i}" for i in range(200))}
    records = load_records(write_jsonl(tmp_path / "t.jsonl", [*TEXT, long_text]))
    examples, stats = tokenize_conversations(records, tokenizer, get_template("basic", tokenizer), max_length=64,
                                             policy="drop")
    assert all(e.labels == e.input_ids for e in examples)  # loss on all tokens
    whole = tokenizer(long_text["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    pieces = [e.input_ids for e in examples[2:]]
    assert sum(pieces, []) == whole and all(len(p) <= 64 for p in pieces) and len(pieces) == -(-len(whole) // 64)
    assert stats.dropped == 0

    run = tmp_path / "run"
    code = main(["sft", "--model", "tiny-random", "--data", str(tmp_path / "t.jsonl"), "--packing", "--max-length", "64",
                 "--max-steps", "2", "--batch-size", "2", "--output-dir", str(run), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "long texts cut into" in out.out + out.err and (run / "final").is_dir()


# --- pandas CSV ------------------------------------------------------------------------------------


def test_pandas_to_csv_with_python_repr_lists_and_an_index_column(tmp_path):
    import pandas as pd

    path = tmp_path / "uf.csv"
    pd.DataFrame(UF).to_csv(path)  # default: index column, lists written as their repr (single quotes)
    assert path.read_text().startswith(",prompt,prompt_id,chosen,")
    pairs = load_records(path, kind="preference")
    assert [(p.chosen, p.rejected) for p in pairs][1] == ("42", "36")
    assert pairs[0].prompt == [{"role": "user", "content": "Write a haiku about rain."}]


def test_pandas_csv_with_mapped_list_columns_decodes_them_as_the_field_they_become(tmp_path):
    import pandas as pd

    path = tmp_path / "renamed.csv"
    pd.DataFrame([{"better": row["chosen"], "worse": row["rejected"]} for row in UF]).to_csv(path)
    pairs = load_records(path, kind="preference", columns={"chosen": "better", "rejected": "worse"})
    assert [(p.prompt[0]["content"], p.chosen, p.rejected) for p in pairs][1] == ("What is 7 * 6?", "42", "36")


def test_csv_cells_are_never_evaluated_as_code(tmp_path):
    path = tmp_path / "evil.csv"
    marker = tmp_path / "pwned"
    cell = f"[__import__('os').system('touch {marker}')]"
    path.write_text(f'prompt,completion\n"{cell}",ok\n')
    (conversation,) = load_records(path, kind="sft")
    assert conversation.messages[0] == {"role": "user", "content": cell}  # not a literal: kept as text
    assert not marker.exists()


# --- column mapping ----------------------------------------------------------------------------------


ODD = [{"question": "Capital of France?", "better": "Paris.", "worse": "Lyon."},
       {"question": "2 + 2?", "better": "4", "worse": "5"}]


def test_columns_map_any_schema_onto_a_known_shape(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", ODD)
    pairs = load_records(path, kind="preference", columns={"prompt": "question", "chosen": "better", "rejected": "worse"})
    assert [(p.prompt[0]["content"], p.chosen, p.rejected) for p in pairs] == [("Capital of France?", "Paris.", "Lyon."),
                                                                               ("2 + 2?", "4", "5")]


def test_a_mapped_column_the_row_lacks_is_named(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [ODD[0], {"question": "x", "better": "y"}])
    with pytest.raises(InputError) as info:
        load_records(path, columns={"prompt": "question", "chosen": "better", "rejected": "worse"})
    assert str(info.value) == (f"{path}:2: field 'worse': missing; the column mapping reads it as 'rejected' "
                               "(columns in this row: better, question)")


def test_cli_columns_flag_on_data_check_and_yaml_on_sft(tmp_path, capsys):
    path = write_jsonl(tmp_path / "odd.jsonl", ODD)
    code, out, _ = data_check(capsys, path, "--columns", "prompt=question", "chosen=better", "rejected=worse")
    assert code == 0 and "shapes: preference 2" in out
    code, _, err = data_check(capsys, path, "--kind", "preference")
    assert code == 2 and err.startswith(f"posttrain data check: error: {path}:1: row has the prompt shape (prompt "
                                        "data), but preference data is needed: ")
    assert err.endswith("or map your columns onto one with --columns FIELD=COLUMN (e.g. --columns prompt=question)\n")

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"q": "Hi?", "a": "Hello."}, {"q": "Bye?", "a": "Goodbye."}])
    config = tmp_path / "sft.yaml"
    config.write_text(f"model: tiny-random\ndata: [{qa}]\ncolumns: {{prompt: q, completion: a}}\nmax_steps: 1\n"
                      f"batch_size: 2\noutput_dir: {tmp_path / 'run'}\nprogress: false\n")
    assert main(["sft", "--config", str(config)]) == 0
    capsys.readouterr()


def test_pipeline_stage_takes_columns_and_a_split_and_notices_changed_split_data(tmp_path):
    from posttrain.pipeline import run_pipeline

    folder = tmp_path / "qa"
    folder.mkdir()
    rows = [{"q": f"{i}+1?", "a": str(i + 1)} for i in range(8)]
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "test.jsonl", rows[:2])
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(f"""
output_dir: {tmp_path / 'run'}
defaults: {{model: tiny-random}}
stages:
  - name: sft
    type: sft
    with: {{data: ["{folder}:train"], eval_data: "{folder}:test", columns: {{prompt: q, completion: a}},
           max_steps: 1, batch_size: 4, progress: false}}
""")
    first = run_pipeline(str(pipeline), log=lambda _: None)
    assert [s["status"] for s in first["stages"]] == ["done"]
    write_jsonl(folder / "train.jsonl", rows[::-1])  # same folder, other content: not cached
    second = run_pipeline(str(pipeline), log=lambda _: None)
    assert [s["cached"] for s in second["stages"]] == [False]


def test_quality_and_eval_commands_take_columns_and_splits(tmp_path, capsys):
    folder = tmp_path / "held"
    folder.mkdir()
    write_jsonl(folder / "test.jsonl", [{"body": "The cat sat on the mat."}, {"body": "Dogs bark at night."}])
    write_jsonl(folder / "validation.jsonl", [{"body": "Unused."}])
    code = main(["eval", "--model", "tiny-random", "--suite", "perplexity", "--heldout", f"{folder}:test",
                 "--columns", "text=body", "--output-dir", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "perplexity" in json.dumps(results)
    capsys.readouterr()

    odd = write_jsonl(tmp_path / "odd.jsonl", ODD)
    code = main(["data", "validate", str(odd), "--columns", "prompt=question", "chosen=better", "rejected=worse"])
    out, err = capsys.readouterr()
    assert code == 0, err
    fields = [line.split()[0] for line in out.split("\n\n")[0].splitlines()[3:]]
    assert fields == ["chosen", "prompt", "rejected"]  # the mapped names, not better/question/worse


def test_cli_trains_on_hh_rlhf_dolly_and_gsm8k_unchanged(tmp_path, capsys):
    hh = write_jsonl(tmp_path / "hh.jsonl", HH)
    code = main(["dpo", "--model", "tiny-random", "--data", str(hh), "--max-steps", "1", "--batch-size", "2",
                 "--output-dir", str(tmp_path / "dpo"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    dolly, gsm8k = write_jsonl(tmp_path / "dolly.jsonl", DOLLY), write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    code = main(["sft", "--model", "tiny-random", "--data", str(dolly), str(gsm8k), "--max-steps", "1",
                 "--batch-size", "2", "--output-dir", str(tmp_path / "sft"), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"{dolly}: 2 examples" in out.out + out.err and f"{gsm8k}: 2 examples" in out.out + out.err
