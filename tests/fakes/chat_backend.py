"""A stand-in for engine.torchside.chat speaking the same pipe protocol, for Pilot tests of the chat screen:
the fine-tune echoes the question in its answer, the base model answers "I do not know.", word by word."""
import json
import sys


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


emit({"event": "ready", "model": "stand-in", "adapter": "stand-in adapter"})
for line in sys.stdin:
    req = json.loads(line)
    question = req["messages"][-1]["content"]
    turns = sum(1 for m in req["messages"] if m["role"] == "user")
    system = next((m["content"] for m in req["messages"] if m["role"] == "system"), "")
    text = (f"You asked {question} (turn {turns}{', ' + system if system else ''})" if req.get("adapter", True)
            else "I do not know.")
    words = text.split(" ")
    for i, w in enumerate(words):
        emit({"id": req["id"], "event": "token", "text": w + (" " if i < len(words) - 1 else "")})
    emit({"id": req["id"], "event": "done", "text": text, "tokens": len(words)})
