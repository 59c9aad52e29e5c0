"""PyTorch on the same machine, the same table as `cargo bench --bench train`.

The models mirror lstmd's reference module (tests/fixtures/gen_golden.py):
Embedding -> one single-layer batch_first nn.LSTM per layer (dropout after
each) -> Linear, trained with Adam on softmax cross-entropy; inference
under torch.inference_mode(). Run it with a Python that has a CPU-capable
torch:

    python benches/pytorch_baseline.py [name-filter]

Environment: BENCH_SECONDS (timed loop length, default 1.0), TORCH_THREADS
(default: torch's own choice, one per core).
"""
import os
import sys
import time

import torch
from torch import nn

PRESETS = {
    # name: (embedding_dim, window, [(units, bidirectional, dropout)])
    "dropout": (8, 10, [(64, False, 0.5), (64, False, 0.5)]),
    "tuning": (8, 10, [(128, False, 0.3), (128, False, 0.3)]),
    "bidirectional": (8, 10, [(64, True, 0.0)]),
    "deep": (8, 10, [(64, False, 0.0), (64, False, 0.0)]),
    "large": (64, 64, [(512, False, 0.0), (512, False, 0.0)]),
}
VOCAB = 100


class Model(nn.Module):
    def __init__(self, embedding_dim, layers):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, embedding_dim)
        self.layers = nn.ModuleList()
        self.dropouts = nn.ModuleList()
        width = embedding_dim
        for units, bidirectional, dropout in layers:
            self.layers.append(
                nn.LSTM(width, units, batch_first=True, bidirectional=bidirectional)
            )
            self.dropouts.append(nn.Dropout(dropout))
            width = units * (2 if bidirectional else 1)
        self.dense = nn.Linear(width, VOCAB)

    def forward(self, ids):
        x = self.embedding(ids)
        last = len(self.layers) - 1
        for i, (layer, drop) in enumerate(zip(self.layers, self.dropouts)):
            out, _ = layer(x)
            if i < last:
                x = drop(out)
            else:
                units = layer.hidden_size
                if layer.bidirectional:
                    x = torch.cat([out[:, -1, :units], out[:, 0, units:]], dim=1)
                else:
                    x = out[:, -1, :]
                x = drop(x)
        return self.dense(x)


def seconds():
    return float(os.environ.get("BENCH_SECONDS", "1.0"))


def rate(step):
    """Steps per second: one warm-up, then at least two and about seconds()."""
    step()
    start = time.perf_counter()
    n = 0
    while n < 2 or time.perf_counter() - start < seconds():
        step()
        n += 1
    return n / (time.perf_counter() - start)


def train_rate(name, rows):
    emb, window, layers = PRESETS[name]
    torch.manual_seed(0)
    model = Model(emb, layers).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    batches = [
        (torch.randint(0, VOCAB, (rows, window)), torch.randint(0, VOCAB, (rows,)))
        for _ in range(8)
    ]
    i = [0]

    def step():
        x, y = batches[i[0] % len(batches)]
        i[0] += 1
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return rate(step) * rows


def infer_rate(name, rows):
    emb, window, layers = PRESETS[name]
    torch.manual_seed(0)
    model = Model(emb, layers).eval()
    x = torch.randint(0, VOCAB, (rows, window))

    def step():
        with torch.inference_mode():
            torch.softmax(model(x), dim=-1)

    return rate(step)


def main():
    if "TORCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["TORCH_THREADS"]))
    only = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
    names = [n for n in PRESETS if only in n]
    print(f"PyTorch {torch.__version__}: {torch.get_num_threads()} threads")
    print(f"{'train':<14} {'batch':>5} {'torch samples/s':>16}")
    dropout_b64 = None
    for name in names:
        for rows in (64, 256):
            r = train_rate(name, rows)
            print(f"{name:<14} {rows:>5} {r:>16.0f}", flush=True)
            if name == "dropout" and rows == 64:
                dropout_b64 = r
    print(f"{'inference':<14} {'b1 torch us':>16} {'b1024 torch seq/s':>18}")
    for name in names:
        one = infer_rate(name, 1)
        many = infer_rate(name, 1024)
        print(f"{name:<14} {1e6 / one:>16.1f} {many * 1024:>18.0f}", flush=True)
    if dropout_b64 is not None:
        print(f"train dropout b64: torch {dropout_b64:.0f} samples/s")


if __name__ == "__main__":
    main()
