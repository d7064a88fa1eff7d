"""Writes demo.jsonl, the CPU demo's dataset: short alpaca-format tasks with patterns a tiny model learns
in a minute (colours, animal sounds, opposites, plurals, counting, sums). Run: python -m presets.make_demo_data"""
import json
import random
from pathlib import Path

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


def records(seed: int = 7):
    rng = random.Random(seed)
    out = []
    for thing, colour in COLOURS.items():
        for q in ("What colour is a {}?", "Tell me the colour of a {}.", "Which colour does a {} have?"):
            out.append((q.format(thing), f"A {thing} is {colour}."))
    for animal, sound in SOUNDS.items():
        for q in ("What does a {} say?", "What sound does a {} make?", "How does a {} sound?"):
            out.append((q.format(animal), f"A {animal} says {sound}!"))
    for word, opp in OPPOSITES.items():
        for a, b in ((word, opp), (opp, word)):
            for q in ("What is the opposite of {}?", "Give the opposite of '{}'."):
                out.append((q.format(a), f"The opposite of {a} is {b}."))
    for one, many in PLURALS.items():
        for q in ("What is the plural of {}?", "One {}, two ...?"):
            out.append((q.format(one), f"One {one}, many {many}."))
    for n in range(2, 9):
        for q in ("Count to {}.", "Please count up to {}."):
            out.append((q.format(n), ", ".join(str(i) for i in range(1, n + 1)) + "."))
    for _ in range(60):
        a, b = rng.randint(1, 5), rng.randint(1, 4)
        out.append((f"What is {NUMBERS[a - 1]} plus {NUMBERS[b - 1]}?", f"{NUMBERS[a - 1].capitalize()} plus "
                    f"{NUMBERS[b - 1]} is {NUMBERS[a + b - 1]}."))
    rng.shuffle(out)
    seen, unique = set(), []
    for q, a in out:
        if q not in seen:
            seen.add(q)
            unique.append({"instruction": q, "input": "", "output": a})
    return unique


if __name__ == "__main__":
    path = Path(__file__).with_name("demo.jsonl")
    rows = records()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} records to {path}")
