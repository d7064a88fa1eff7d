"""A stand-in for engine.torchside.chat speaking the same pipe protocol, for Pilot tests of the chat screen:
the fine-tune echoes the question in its answer, the base model answers "I do not know.", word by word.

Optional arguments: a file to append each request to (one JSON line each, so a test counts what reached the
backend), and seconds to wait before each token (a slow model: a reply takes a while to arrive). Asked
"die", it exits in the middle of its reply, as a backend that crashes or is killed does."""
import json
import sys
import time

LOG = sys.argv[1] if len(sys.argv) > 1 else None
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


emit({"event": "ready", "model": "stand-in", "adapter": "stand-in adapter"})
for line in sys.stdin:
    req = json.loads(line)
    if LOG:
        with open(LOG, "a") as f:
            f.write(json.dumps(req) + "\n")
    question = req["messages"][-1]["content"]
    turns = sum(1 for m in req["messages"] if m["role"] == "user")
    system = next((m["content"] for m in req["messages"] if m["role"] == "system"), "")
    text = (f"You asked {question} (turn {turns}{', ' + system if system else ''})" if req.get("adapter", True)
            else "I do not know.")
    words = text.split(" ")
    for i, w in enumerate(words):
        time.sleep(DELAY)
        if question == "die" and i == 2:
            sys.exit(3)
        emit({"id": req["id"], "event": "token", "text": w + (" " if i < len(words) - 1 else "")})
    emit({"id": req["id"], "event": "done", "text": text, "tokens": len(words)})
