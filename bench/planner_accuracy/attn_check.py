"""GPU check: the three packed-attention paths agree, forward and backward."""
import torch, sys
sys.path.insert(0, ".")
from engine.torchside import attention as A
dev = "cuda" if torch.cuda.is_available() else "cpu"
dt = torch.bfloat16 if dev == "cuda" else torch.float32
torch.manual_seed(0)
segs = [[300, 500, 1248], [2000, 48]]
b, s, h, kv, d = 2, 2048, 32, 8, 128
outs = {}
for name in ("varlen", "masked", "loop"):
    torch.manual_seed(0)
    q = torch.randn(b, h, s, d, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(b, kv, s, d, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(b, kv, s, d, device=dev, dtype=dt, requires_grad=True)
    if name == "varlen":
        if A.varlen_call() is None or dev != "cuda":
            print("varlen: not available here"); continue
        o = A._varlen(q, k, v, segs, None)
    elif name == "masked":
        o = A._masked(q, k, v, segs, 0.0, None)
    else:
        o = A._per_example(q, k, v, segs, 0.0, None)
    o.float().square().sum().backward()
    outs[name] = (o.float(), q.grad.float(), k.grad.float())
ref = outs["loop"]
for n, o in outs.items():
    print(n, [round(float((x - y).abs().max()), 4) for x, y in zip(o, ref)], flush=True)
