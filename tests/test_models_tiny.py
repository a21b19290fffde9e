"""tiny-random: deterministic weights, byte-level tokenizer, ChatML template, generation."""
import torch

from posttrain.models import build_tiny_model, build_tiny_tokenizer, load_model, load_tokenizer
from posttrain.models.tiny import TINY_VOCAB_SIZE


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_identical_weights_and_other_seed_differs():
    a, b, c = _state(build_tiny_model(seed=0)), _state(build_tiny_model(seed=0)), _state(build_tiny_model(seed=1))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"])


def test_building_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_load_model_alias_matches_builder_and_is_small():
    model = load_model("tiny-random", seed=3)
    reference = build_tiny_model(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))
    assert model.config.vocab_size == TINY_VOCAB_SIZE
    assert sum(p.numel() for p in model.parameters()) < 200_000
    assert not model.training
    assert model.config._attn_implementation == "sdpa"


def test_tokenizer_is_byte_level_and_round_trips_unicode():
    tok = build_tiny_tokenizer()
    assert len(tok) == TINY_VOCAB_SIZE
    text = "héllo, wörld ✓ 2+3=5"
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no BOS added
    assert ids[0] == 4 + ord("h")
    assert tok.decode(ids) == text


def test_special_tokens():
    tok = build_tiny_tokenizer()
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.pad_token, tok.pad_token_id) == ("<pad>", 3)
    assert tok.convert_tokens_to_ids("<|im_start|>") == 1
    assert tok("a<|im_end|>b")["input_ids"] == [4 + ord("a"), 2, 4 + ord("b")]
    assert tok.decode([4 + ord("a"), 2, 3], skip_special_tokens=True) == "a"


def test_chat_template_renders_chatml_and_marks_assistant_tokens():
    tok = load_tokenizer("tiny-random")
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Yo"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nYo<|im_end|>\n")
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    out = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    marked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(marked) == "Yo<|im_end|>"


def test_padding_side_is_configurable():
    assert build_tiny_tokenizer().padding_side == "right"
    tok = load_tokenizer("tiny-random", padding_side="left")
    batch = tok(["a", "abc"], padding=True)
    assert batch["input_ids"][0][:2] == [3, 3]
    assert batch["attention_mask"][0] == [0, 0, 1]


def test_generate_batched_left_padded_matches_unpadded():
    model, tok = load_model("tiny-random"), load_tokenizer("tiny-random", padding_side="left")
    prompts = [[{"role": "user", "content": "What is 2+3?"}], [{"role": "user", "content": "Hi"}]]
    batch = tok.apply_chat_template(prompts, add_generation_prompt=True, return_tensors="pt", return_dict=True,
                                    padding=True)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 6
    single = tok.apply_chat_template(prompts[1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    alone = model.generate(**single, max_new_tokens=6, do_sample=False)
    new_alone = alone[0, single["input_ids"].shape[1]:]
    assert torch.equal(out[1, batch["input_ids"].shape[1]:][: len(new_alone)], new_alone)
