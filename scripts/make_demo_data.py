"""Write the demo data shipped in src/posttrain/resources/data/ (deterministic: run it again, same files).

    .venv/bin/python scripts/make_demo_data.py [--out DIR] [--seed 0]

The task: short, varied everyday questions (arithmetic, capitals, opposites,
plurals, days and months, unit conversions, ...) answered ALWAYS as one JSON
object `{"answer": ..., "reason": ...}` with the correct answer and a one-line
reason. A chat model answers these in prose out of the box, so after a short
LoRA fine-tune the change is easy to see (and to measure: does the reply parse
as that JSON object, and is the answer right?).

Files:
  instruct_alpaca.jsonl           training set, Alpaca shape (instruction, input, output)
  instruct_chat.jsonl             the same examples, chat-messages shape
  instruct_heldout.jsonl          prompts (with the expected answer) that are not in training:
                                  their countries, words, animals... never appear in training
  sample_prompt_completion.jsonl  prompt/completion rows (text and message-list forms)
  sample_preference.jsonl         prompt/chosen/rejected: JSON answer preferred over a prose or wrong one
  sample_preference_chat.jsonl    the same in TRL's message-list forms (explicit and implicit prompt, margin)
  sample_ranked.jsonl             prompt/responses with ranking or scores
  sample_unpaired.jsonl           prompt/completion/label (KTO)
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "posttrain" / "resources" / "data"

# --- facts (item lists are split into training and held-out parts below) ----------------------

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Russia", "Moscow"), ("China", "Beijing"),
    ("India", "New Delhi"), ("Thailand", "Bangkok"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"),
    ("Cuba", "Havana"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Hungary", "Budapest"),
    ("Turkey", "Ankara"), ("Australia", "Canberra"), ("Mexico", "Mexico City"), ("Brazil", "Brasilia"),
    ("South Korea", "Seoul"), ("Vietnam", "Hanoi"), ("Belgium", "Brussels"), ("Iceland", "Reykjavik"),
    ("Colombia", "Bogota"), ("Morocco", "Rabat"), ("Nepal", "Kathmandu"), ("Ghana", "Accra"),
]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"), ("open", "closed"),
    ("light", "dark"), ("early", "late"), ("full", "empty"), ("strong", "weak"), ("wet", "dry"),
    ("young", "old"), ("loud", "quiet"), ("rich", "poor"), ("tall", "short"), ("hard", "soft"),
    ("inside", "outside"), ("win", "lose"), ("begin", "end"), ("push", "pull"), ("thick", "thin"),
    ("clean", "dirty"), ("heavy", "light"), ("true", "false"), ("near", "far"), ("buy", "sell"),
    ("day", "night"), ("left", "right"), ("first", "last"), ("cheap", "expensive"),
]
PLURALS = [
    ("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("goose", "geese"),
    ("man", "men"), ("woman", "women"), ("person", "people"), ("ox", "oxen"), ("leaf", "leaves"),
    ("knife", "knives"), ("wolf", "wolves"), ("city", "cities"), ("box", "boxes"), ("bus", "buses"),
    ("baby", "babies"), ("potato", "potatoes"), ("cactus", "cacti"), ("sheep", "sheep"), ("fish", "fish"),
    ("half", "halves"), ("shelf", "shelves"),
]
LEGS = [
    ("spider", 8), ("dog", 4), ("cat", 4), ("chicken", 2), ("ant", 6), ("horse", 4), ("duck", 2),
    ("bee", 6), ("octopus", 8), ("cow", 4), ("penguin", 2), ("beetle", 6), ("goat", 4), ("ostrich", 2),
    ("scorpion", 8), ("butterfly", 6), ("lion", 4), ("crab", 10),
]
COLOURS = [
    ("a ripe banana", "yellow"), ("grass", "green"), ("fresh snow", "white"), ("coal", "black"),
    ("a clear daytime sky", "blue"), ("a ripe tomato", "red"), ("a carrot", "orange"), ("chocolate", "brown"),
    ("a lemon", "yellow"), ("a lime", "green"), ("milk", "white"), ("a fire truck", "red"),
    ("an eggplant", "purple"), ("a pumpkin", "orange"), ("a polar bear's fur", "white"), ("a crow", "black"),
]
SOUNDS = [
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"), ("lion", "roar"),
    ("owl", "hoot"), ("snake", "hiss"), ("pig", "oink"), ("horse", "neigh"), ("bee", "buzz"), ("rooster", "cock-a-doodle-doo"),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WORDS = ["apple", "river", "garden", "pencil", "window", "orange", "planet", "bridge", "candle", "forest",
         "guitar", "rocket", "island", "mirror", "tiger", "cloud", "basket", "dragon", "ladder", "violin"]

# Held out: the last few items of each list never appear in training.
HELD = {"capitals": 4, "opposites": 3, "plurals": 2, "legs": 2, "colours": 2, "sounds": 1, "words": 3}


def split(items: list, name: str) -> tuple[list, list]:
    n = HELD[name]
    return items[:-n], items[-n:]


def answer(value: object, reason: str) -> str:
    """The one output format of the task."""
    return json.dumps({"answer": str(value), "reason": reason}, ensure_ascii=False)


# Each generator returns (instruction, input, answer value, reason) for a random item.


def gen_add(rng: random.Random, _: dict) -> tuple:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    q = rng.choice(["What is {a} plus {b}?", "What is {a} + {b}?", "Add {a} and {b}.", "What do you get when you add {a} to {b}?"])
    return q.format(a=a, b=b), "", a + b, f"{a} + {b} = {a + b}."


def gen_sub(rng: random.Random, _: dict) -> tuple:
    a = rng.randint(10, 90)
    b = rng.randint(1, a - 1)
    q = rng.choice(["What is {a} minus {b}?", "What is {a} - {b}?", "Subtract {b} from {a}."])
    return q.format(a=a, b=b), "", a - b, f"{a} - {b} = {a - b}."


def gen_mul(rng: random.Random, _: dict) -> tuple:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    q = rng.choice(["What is {a} times {b}?", "What is {a} multiplied by {b}?", "What is {a} x {b}?"])
    return q.format(a=a, b=b), "", a * b, f"{a} x {b} = {a * b}."


def gen_capital(rng: random.Random, facts: dict) -> tuple:
    country, city = rng.choice(facts["capitals"])
    q = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}."])
    return q.format(c=country), "", city, f"{city} is the capital city of {country}."


def gen_opposite(rng: random.Random, facts: dict) -> tuple:
    word, other = rng.choice(facts["opposites"])
    q = rng.choice(["What is the opposite of '{w}'?", "Give the opposite of the word '{w}'.", "What word means the opposite of '{w}'?"])
    return q.format(w=word), "", other, f"'{other}' means the opposite of '{word}'."


def gen_parity(rng: random.Random, _: dict) -> tuple:
    n = rng.randint(1, 200)
    q = rng.choice(["Is {n} even or odd?", "Is the number {n} odd or even?"])
    kind, why = parity(n)
    return q.format(n=n), "", kind, why


def parity(n: int) -> tuple[str, str]:
    if n % 2 == 0:
        return "even", f"{n} divides by 2 with no remainder."
    return "odd", f"{n} leaves a remainder of 1 when divided by 2."


def gen_minutes(rng: random.Random, _: dict) -> tuple:
    h = rng.randint(2, 12)
    q = rng.choice(["How many minutes are in {h} hours?", "How many minutes is {h} hours?"])
    return q.format(h=h), "", h * 60, f"An hour has 60 minutes, so {h} x 60 = {h * 60}."


def gen_days_in_weeks(rng: random.Random, _: dict) -> tuple:
    w = rng.randint(2, 10)
    return f"How many days are in {w} weeks?", "", w * 7, f"A week has 7 days, so {w} x 7 = {w * 7}."


def gen_next_day(rng: random.Random, _: dict) -> tuple:
    i = rng.randrange(7)
    q = rng.choice(["What day comes after {d}?", "Which day of the week follows {d}?"])
    return q.format(d=DAYS[i]), "", DAYS[(i + 1) % 7], f"In the week, {DAYS[(i + 1) % 7]} follows {DAYS[i]}."


def gen_next_month(rng: random.Random, _: dict) -> tuple:
    i = rng.randrange(12)
    q = rng.choice(["What month comes after {m}?", "Which month follows {m}?"])
    return q.format(m=MONTHS[i]), "", MONTHS[(i + 1) % 12], f"{MONTHS[(i + 1) % 12]} is the month after {MONTHS[i]}."


def gen_larger(rng: random.Random, _: dict) -> tuple:
    a, b = rng.sample(range(1, 500), 2)
    q = rng.choice(["Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?"])
    big, small = max(a, b), min(a, b)
    return q.format(a=a, b=b), "", big, f"{big} is greater than {small}."


def gen_plural(rng: random.Random, facts: dict) -> tuple:
    word, plural = rng.choice(facts["plurals"])
    q = rng.choice(["What is the plural of '{w}'?", "How do you say more than one '{w}'?"])
    why = f"The plural of '{word}' is '{plural}'." if word != plural else f"'{word}' stays the same in the plural."
    return q.format(w=word), "", plural, why


def gen_legs(rng: random.Random, facts: dict) -> tuple:
    animal, n = rng.choice(facts["legs"])
    q = rng.choice(["How many legs does a {a} have?", "How many legs has a {a} got?"])
    return q.format(a=animal), "", n, f"A {animal} has {n} legs."


def gen_colour(rng: random.Random, facts: dict) -> tuple:
    thing, colour = rng.choice(facts["colours"])
    q = rng.choice(["What colour is {t}?", "What is the usual colour of {t}?"])
    return q.format(t=thing), "", colour, f"{thing[0].upper() + thing[1:]} is usually {colour}."


def gen_sound(rng: random.Random, facts: dict) -> tuple:
    animal, sound = rng.choice(facts["sounds"])
    q = rng.choice(["What sound does a {a} make?", "What noise does a {a} make?"])
    return q.format(a=animal), "", sound, f"A {animal} makes a '{sound}' sound."


def gen_letters(rng: random.Random, facts: dict) -> tuple:
    word = rng.choice(facts["words"])
    if rng.random() < 0.5:
        return f"How many letters are in the word '{word}'?", "", len(word), f"'{word}' is spelled with {len(word)} letters."
    return f"What is the first letter of the word '{word}'?", "", word[0], f"'{word}' starts with '{word[0]}'."


# Alpaca rows with a separate input field.


def gen_input_add(rng: random.Random, _: dict) -> tuple:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return "Add the two numbers.", f"{a} and {b}", a + b, f"{a} + {b} = {a + b}."


def gen_input_capital(rng: random.Random, facts: dict) -> tuple:
    country, city = rng.choice(facts["capitals"])
    return "Give the capital city of this country.", country, city, f"{city} is the capital city of {country}."


def gen_input_opposite(rng: random.Random, facts: dict) -> tuple:
    word, other = rng.choice(facts["opposites"])
    return "Give the opposite of this word.", word, other, f"'{other}' means the opposite of '{word}'."


def gen_input_parity(rng: random.Random, _: dict) -> tuple:
    n = rng.randint(1, 200)
    kind, why = parity(n)
    return "Say whether this number is even or odd.", str(n), kind, why


GENERATORS = [gen_add, gen_sub, gen_mul, gen_capital, gen_opposite, gen_parity, gen_minutes, gen_days_in_weeks,
              gen_next_day, gen_next_month, gen_larger, gen_plural, gen_legs, gen_colour, gen_sound, gen_letters,
              gen_input_add, gen_input_capital, gen_input_opposite, gen_input_parity]


def user_text(instruction: str, input_text: str) -> str:
    """Same joining rule as posttrain.data.formats.alpaca_user_text."""
    return f"{instruction}\n\n{input_text}" if input_text.strip() else instruction


def make_examples(rng: random.Random, facts: dict, count: int, exclude: set[str] = frozenset()) -> list[dict]:
    seen: set[str] = set(exclude)
    examples = []
    turn = 0
    while len(examples) < count:
        # Round robin, so every kind of question is about equally common; a generator
        # with few distinct questions left (days of the week) just gives its turn away.
        generator = GENERATORS[turn % len(GENERATORS)]
        turn += 1
        for _ in range(50):
            instruction, input_text, value, reason = generator(rng, facts)
            key = user_text(instruction, input_text)
            if key not in seen:
                break
        else:
            continue
        seen.add(key)
        examples.append({"instruction": instruction, "input": input_text, "output": answer(value, reason),
                         "answer": str(value), "category": generator.__name__[4:]})
    return examples


# --- other shapes, built from the same examples ---------------------------------------------


def prose(example: dict) -> str:
    """A plain-prose reply: right content, wrong format (the base model's habit)."""
    reason = json.loads(example["output"])["reason"]
    return f"The answer is {example['answer']}. {reason}"


def wrong_json(example: dict, rng: random.Random) -> str:
    """Right format, wrong answer."""
    value = example["answer"]
    wrong = str(int(value) + rng.choice([-2, -1, 1, 3])) if value.isdigit() else "I am not sure"
    return json.dumps({"answer": wrong, "reason": "This is my best guess."})


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows):4d} rows to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=320)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    lists = {"capitals": CAPITALS, "opposites": OPPOSITES, "plurals": PLURALS, "legs": LEGS,
             "colours": COLOURS, "sounds": SOUNDS, "words": WORDS}
    train_facts, held_facts = {}, {}
    for name, items in lists.items():
        train_facts[name], held_facts[name] = split(items, name)

    train = make_examples(rng, train_facts, args.train)
    # Held out: one example from each fact-based generator using unseen items, plus unseen arithmetic.
    fact_generators = [gen_capital, gen_opposite, gen_plural, gen_legs, gen_colour, gen_sound, gen_letters,
                       gen_input_capital, gen_input_opposite]
    held: list[dict] = []
    train_keys = {user_text(e["instruction"], e["input"]) for e in train}
    held_rng = random.Random(args.seed + 1)
    for generator in fact_generators + [gen_capital, gen_opposite, gen_letters, gen_legs]:
        instruction, input_text, value, _ = _unique(generator, held_rng, held_facts, train_keys, held)
        held.append({"prompt": user_text(instruction, input_text), "answer": str(value), "category": generator.__name__[4:]})
    for generator in [gen_add, gen_sub, gen_mul, gen_parity, gen_larger, gen_minutes, gen_input_add]:
        instruction, input_text, value, _ = _unique(generator, held_rng, train_facts, train_keys, held)
        held.append({"prompt": user_text(instruction, input_text), "answer": str(value), "category": generator.__name__[4:]})

    alpaca = [{"instruction": e["instruction"], "input": e["input"], "output": e["output"]} for e in train]
    chat = [{"messages": [{"role": "user", "content": user_text(e["instruction"], e["input"])},
                          {"role": "assistant", "content": e["output"]}]} for e in train]
    write(args.out / "instruct_alpaca.jsonl", alpaca)
    write(args.out / "instruct_chat.jsonl", chat)
    write(args.out / "instruct_heldout.jsonl", held)
    write_samples(args.out, train, random.Random(args.seed + 2))


def _unique(generator, rng: random.Random, facts: dict, taken: set[str], held: list[dict]) -> tuple:
    """Draw from `generator` until the prompt is new (not in training, not already held out)."""
    used = taken | {h["prompt"] for h in held}
    answers = {h["answer"] for h in held}
    for _ in range(1000):
        item = generator(rng, facts)
        # New prompt, and a new answer too, so the held-out set asks about 20 different things.
        if user_text(item[0], item[1]) not in used and str(item[2]) not in answers:
            return item
    raise SystemExit(f"{generator.__name__}: no question left that is not in training")


def write_samples(out: Path, train: list[dict], rng: random.Random) -> None:
    rows = train[:120]
    prompt = lambda e: user_text(e["instruction"], e["input"])  # noqa: E731
    write(out / "sample_prompt_completion.jsonl",
          [{"prompt": prompt(e), "completion": e["output"]} for e in rows[:30]]
          + [{"prompt": [{"role": "user", "content": prompt(e)}],
              "completion": [{"role": "assistant", "content": e["output"]}]} for e in rows[30:40]])
    preference = []
    for e in rows:
        rejected = prose(e) if rng.random() < 0.6 else wrong_json(e, rng)
        preference.append({"prompt": prompt(e), "chosen": e["output"], "rejected": rejected})
    write(out / "sample_preference.jsonl", preference)
    chat_pref = []
    for i, e in enumerate(rows[:12]):
        user = {"role": "user", "content": prompt(e)}
        chosen = {"role": "assistant", "content": e["output"]}
        rejected = {"role": "assistant", "content": prose(e)}
        if i % 3 == 0:  # explicit prompt, conversational
            chat_pref.append({"prompt": [user], "chosen": [chosen], "rejected": [rejected]})
        elif i % 3 == 1:  # implicit prompt: the shared first message
            chat_pref.append({"chosen": [user, chosen], "rejected": [user, rejected]})
        else:  # text with a margin (how much better chosen is, e.g. from a rating gap)
            chat_pref.append({"prompt": prompt(e), "chosen": e["output"], "rejected": prose(e), "margin": 1.0})
    write(out / "sample_preference_chat.jsonl", chat_pref)
    ranked = []
    for i, e in enumerate(rows[:40]):
        best, middle, worst = e["output"], prose(e), wrong_json(e, rng)
        responses = [best, middle, worst]
        order = list(range(3))
        rng.shuffle(order)
        shuffled = [responses[k] for k in order]
        ranking = [order.index(k) for k in range(3)]  # positions of best, middle, worst
        if i % 2 == 0:
            ranked.append({"prompt": prompt(e), "responses": shuffled, "ranking": ranking})
        else:
            score_of = {0: 9.0, 1: 5.0, 2: 1.0}
            ranked.append({"prompt": prompt(e), "responses": shuffled, "scores": [score_of[k] for k in order]})
    write(out / "sample_ranked.jsonl", ranked)
    unpaired = []
    for i, e in enumerate(rows[:80]):
        good = i % 2 == 0
        completion = e["output"] if good else (prose(e) if i % 4 == 1 else wrong_json(e, rng))
        unpaired.append({"prompt": prompt(e), "completion": completion, "label": good})
    write(out / "sample_unpaired.jsonl", unpaired)


if __name__ == "__main__":
    main()
