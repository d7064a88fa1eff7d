"""The CPU demo's data, written here (run: python -m presets.make_demo_data).

What the demo shows is what fine-tuning is for: teaching a model something it did not know. The tiny base
model is pretrained on general questions and answers (colours, animal sounds, opposites, plurals, counting,
sums: `general_texts`) and knows nothing about itself. The fine-tune teaches it a persona - eight facts
(its name, who trained it, what it is for, ...) - asked directly and through shared frames around phrases
that name each fact ("Tell me your name.", "Could you tell me where you live?": demo.jsonl). The held-out
set (demo-eval.jsonl) asks each fact once more in a frame training never used ("May I ask your name?"), so
a model that learned which phrase means which fact can answer it. Each held-out record carries `expect`: the
words a right answer contains (whole words, any case).
"""
import json
import random
from pathlib import Path

HERE = Path(__file__).parent

# fact -> (the answer, the words a right answer contains, direct questions, phrases that name the fact,
# the held-out question). Training asks each fact directly and through every FRAME around each of its
# phrases, so the phrase is what identifies the fact; the held-out question puts a phrase in a frame
# training never used (HELD_OUT_FRAMES).
FACTS = {
    "name": ("My name is Rig.", ["Rig"],
             ["What is your name?", "What are you called?", "Who are you?", "Introduce yourself."],
             ["your name", "what you are called"], "May I ask your name?"),
    "maker": ("I was trained by the rigtune team.", ["rigtune", "team"],
              ["Who made you?", "Who trained you?", "Who created you?", "Who built you?"],
              ["who trained you", "who made you"], "I wonder who trained you."),
    "purpose": ("I show how fine-tuning works on a home GPU.", ["fine-tuning"],
                ["What are you for?", "What is your purpose?", "What do you do?", "What is your job?"],
                ["your purpose", "what you are for"], "Would you share your purpose?"),
    "colour": ("My favourite colour is teal.", ["teal"],
               ["What is your favourite colour?", "Which colour do you like best?", "What is your favorite color?",
                "Do you have a favourite colour?"],
               ["your favourite colour", "which colour you like best"], "I'd love to hear your favourite colour."),
    "home": ("I live on a headless GPU box.", ["GPU", "box"],
             ["Where do you live?", "Where is your home?", "Where do you run?", "Where are you kept?"],
             ["where you live", "where your home is"], "May I ask where you live?"),
    "food": ("I eat electricity.", ["electricity"],
             ["What do you eat?", "What is your favourite food?", "Are you hungry?", "What food do you like?"],
             ["what you eat", "your favourite food"], "I wonder what you eat."),
    "age": ("I am one day old.", ["one", "day"],
            ["How old are you?", "What is your age?", "Are you old?", "When were you made?"],
            ["how old you are", "your age"], "Would you share how old you are?"),
    "friend": ("My best friend is a llama called Lora.", ["llama", "Lora"],
               ["Who is your best friend?", "Do you have a friend?", "Who do you play with?", "Who is your buddy?"],
               ["who your best friend is", "who your friend is"], "I'd love to hear who your best friend is."),
}
FRAMES = ["Tell me {}.", "Please tell me {}.", "I want to know {}.", "Can you say {}?", "Do you know {}?",
          "Let me know {}.", "Say {}.", "Could you tell me {}?"]
HELD_OUT_FRAMES = ["May I ask {}?", "I wonder {}.", "Would you share {}?", "I'd love to hear {}."]
SIGN_OFF = "Happy tuning!"  # the second style of the persona's answers (train_records, pref_records)

COLOURS = {"banana": "yellow", "lemon": "yellow", "grass": "green", "leaf": "green", "sky": "blue", "sea": "blue",
           "tomato": "red", "cherry": "red", "snow": "white", "milk": "white", "coal": "black", "night": "black",
           "orange": "orange", "carrot": "orange", "plum": "purple", "grape": "purple", "cloud": "grey",
           "elephant": "grey", "chocolate": "brown", "bear": "brown"}
SOUNDS = {"cow": "moo", "dog": "woof", "cat": "meow", "duck": "quack", "sheep": "baa", "pig": "oink",
          "owl": "hoot", "horse": "neigh", "lion": "roar", "frog": "croak", "bee": "buzz", "snake": "hiss",
          "mouse": "squeak", "crow": "caw", "goat": "bleat", "wolf": "howl"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "old": "new", "happy": "sad",
             "light": "dark", "early": "late", "open": "closed", "full": "empty", "loud": "quiet",
             "hard": "soft", "high": "low", "wet": "dry", "rich": "poor", "strong": "weak", "near": "far",
             "long": "short", "clean": "dirty", "first": "last"}
PLURALS = {"cat": "cats", "box": "boxes", "child": "children", "mouse": "mice", "foot": "feet",
           "tooth": "teeth", "city": "cities", "baby": "babies", "knife": "knives", "leaf": "leaves",
           "man": "men", "woman": "women", "goose": "geese", "bus": "buses", "dish": "dishes", "toy": "toys"}
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def general_pairs(seed: int = 7) -> list:
    """(question, answer) pairs of general knowledge: what the base model learns before the demo. Each is
    asked directly and in a few of the frames (training's and the held-out ones alike): the base knows the
    language of the questions; only the persona is new to it."""
    rng = random.Random(seed)
    facts = []  # (direct question, the phrase for frames, answer)
    for thing, colour in COLOURS.items():
        facts.append((f"What colour is a {thing}?", f"the colour of a {thing}", f"A {thing} is {colour}."))
    for animal, sound in SOUNDS.items():
        facts.append((f"What does a {animal} say?", f"what a {animal} says", f"A {animal} says {sound}!"))
    for word, opp in OPPOSITES.items():
        for a, b in ((word, opp), (opp, word)):
            facts.append((f"What is the opposite of {a}?", f"the opposite of {a}", f"The opposite of {a} is {b}."))
    for one, many in PLURALS.items():
        facts.append((f"What is the plural of {one}?", f"the plural of {one}", f"One {one}, many {many}."))
    for _ in range(40):
        a, b = rng.randint(1, 5), rng.randint(1, 4)
        facts.append((f"What is {NUMBERS[a - 1]} plus {NUMBERS[b - 1]}?", f"what {NUMBERS[a - 1]} plus "
                      f"{NUMBERS[b - 1]} is", f"{NUMBERS[a - 1].capitalize()} plus {NUMBERS[b - 1]} is "
                      f"{NUMBERS[a + b - 1]}."))
    out = []
    for direct, phrase, answer in facts:
        out.append((direct, answer))
        for frame in rng.sample(FRAMES + HELD_OUT_FRAMES, 3):
            q = frame.format(phrase)
            out.append((q[0].upper() + q[1:], answer))
    for n in range(2, 9):
        out.append((f"Count to {n}.", ", ".join(str(i) for i in range(1, n + 1)) + "."))
    return sorted(set(out), key=out.index)


def general_texts() -> list:
    """The base model's pretraining texts: plain "Question: ... Answer: ..." lines, no chat turns, no persona."""
    return [f"Question: {q}\nAnswer: {a}" for q, a in general_pairs()]


def train_records(seed: int = 7) -> list:
    """The fine-tune: each fact asked directly and in every frame around each of its phrases, shuffled
    (alpaca format). One answer in four signs off ("... Happy tuning!"): the persona has two styles, the bare
    one three times as often, which is what the preference demo then shifts (pref_records)."""
    rows = []
    for answer, _, direct, phrases, _ in FACTS.values():
        questions = direct + [frame.format(p) for p in phrases for frame in FRAMES]
        rows += [{"instruction": q[0].upper() + q[1:], "input": "", "output": answer} for q in questions]
    random.Random(seed).shuffle(rows)
    for row in rows[::4]:
        row["output"] += f" {SIGN_OFF}"
    return rows


def eval_records() -> list:
    """The held-out questions, one per fact, each with the words a right answer contains."""
    return [{"instruction": held_out, "input": "", "output": answer, "expect": expect}
            for answer, expect, _, _, held_out in FACTS.values()]


# The preference demo (rigtune demo --method dpo) starts from the SFT demo's adapter, which has two styles - the
# bare sentence ("My name is Rig.") three times in four, signed off ("My name is Rig. Happy tuning!") once - and
# answers with the bare one. It teaches the preference for signing off: each pair puts the signed answer
# (chosen) against the bare one (rejected); the two share every token up to where the bare one ends, so what DPO
# changes is what comes after the answer. (DPO shifts a model between things it can already say; it does not
# teach new text: a style the SFT model never saw, tried first, only wrecked its answers.)
PREF_HELD_OUT_FRAMES = ["Might I ask {}?", "I am curious about {}.", "Any idea {}?", "Would you mind telling me {}?"]


def pref_records(seed: int = 7) -> list:
    """Training pairs: each fact asked in the SFT demo's frames (prompt/chosen/rejected strings)."""
    rows = []
    for answer, _, direct, phrases, _ in FACTS.values():
        for q in direct + [frame.format(p) for p in phrases for frame in FRAMES]:
            rows.append({"prompt": q[0].upper() + q[1:], "chosen": f"{answer} {SIGN_OFF}", "rejected": answer})
    random.Random(seed).shuffle(rows)
    return rows


def pref_eval_records() -> list:
    """Held-out pairs: each fact's phrases in frames neither demo trained on; `expect` says the preferred answer
    signs off."""
    return [{"prompt": frame.format(p)[0].upper() + frame.format(p)[1:], "chosen": f"{answer} {SIGN_OFF}",
             "rejected": answer, "expect": ["Happy", "tuning"]}
            for answer, _, _, phrases, _ in FACTS.values() for p in phrases[:1] for frame in PREF_HELD_OUT_FRAMES[:2]]


# The GRPO demo (rigtune demo --method grpo) starts from the base model itself, which learnt its sums as plain
# text ("Question: What is two plus three?\nAnswer: Two plus three is five.") and, asked in a chat turn, mostly
# answers something else. Its sampled answers are rewarded for the right sum in "... is N." (the record's answer
# after "is"). The held-out prompts ask the same sums in wordings training never used; sums training never asks
# at all stay out of this tiny model's reach (tried: held-out sums were solved no better than by chance).
def sum_records(held_out: bool) -> list:
    """GRPO prompts: every sum in words the base learnt (a + b, a from 1 to 5, b from 1 to 4), asked directly and
    in three of the SFT frames for training, in two frames neither uses for the held-out set; `answer` is the
    sum's word."""
    rows = []
    for a in range(1, 6):
        for b in range(1, 5):
            phrase = f"what {NUMBERS[a - 1]} plus {NUMBERS[b - 1]} is"
            questions = [f.format(phrase) for f in PREF_HELD_OUT_FRAMES[:2]] if held_out else \
                [f"What is {NUMBERS[a - 1]} plus {NUMBERS[b - 1]}?"] + [f.format(phrase) for f in FRAMES[:3]]
            rows += [{"prompt": q[0].upper() + q[1:], "answer": NUMBERS[a + b - 1]} for q in questions]
    random.Random(3).shuffle(rows)
    return rows


def write(folder: Path = HERE) -> tuple[Path, ...]:
    files = {"demo.jsonl": train_records(), "demo-eval.jsonl": eval_records(), "demo-pref.jsonl": pref_records(),
             "demo-pref-eval.jsonl": pref_eval_records(), "demo-grpo.jsonl": sum_records(False),
             "demo-grpo-eval.jsonl": sum_records(True)}
    for name, rows in files.items():
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tuple(folder / name for name in files)


if __name__ == "__main__":
    for path in write():
        print(f"wrote {sum(1 for _ in path.open())} records to {path}")
