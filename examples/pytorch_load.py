#!/usr/bin/env python3
"""Load an lstmd model into PyTorch and print next-token probabilities.

Usage:
    python examples/pytorch_load.py MODEL_DIR "1 2 3 4"      # token ids
    python examples/pytorch_load.py MODEL_DIR --text "hello"  # text models (char or byte vocabulary)
    python examples/pytorch_load.py MODEL_DIR "1 2 3" --json-only

MODEL_DIR holds `model.safetensors` (weights under PyTorch state-dict names) and
`metadata.json`, whose "spec" describes the architecture:

    {"spec": {"vocab_size": 100, "embedding_dim": 8, "window": 10, "embedding_dropout": 0.0,
              "layers": [{"cell": "lstm", "units": 64, "bidirectional": false, "dropout": 0.5}]},
     "vocabulary": null | {"kind": "char" | "byte", "tokens": ["<unk>", "a", ...]}, ...}

Prints {"probabilities": [p0, p1, ...]} (softmax over the whole vocabulary, float64)
to stdout and, unless --json-only, the five most likely tokens to stderr.

The whole input is fed, whatever its length, as lstmd's Predict does.
Dropout layers are not part of the module: they are the identity at inference.

Needs: torch, safetensors (pip install torch safetensors).
"""

import argparse
import json
import os
import sys

import torch
import torch.nn as nn
from safetensors.torch import load_file


class Ref(nn.Module):
    """lstmd's reference module; its state-dict names are the weight-naming contract."""

    def __init__(self, vocab, emb, layers):
        # layers: list of dict(cell in {"lstm","gru","rnn"}, units, bidirectional)
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        mods = []
        inp = emb
        for l in layers:
            cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[l["cell"]]  # nn.RNN: tanh
            mods.append(
                cls(inp, l["units"], num_layers=1, batch_first=True, bidirectional=l["bidirectional"])
            )
            inp = l["units"] * (2 if l["bidirectional"] else 1)
        self.layers = nn.ModuleList(mods)
        self.dense = nn.Linear(inp, vocab)

    def forward(self, ids):  # ids: [B, T] int64 -> logits [B, vocab]
        x = self.embedding(ids)
        for i, layer in enumerate(self.layers):
            out, _ = layer(x)
            if i + 1 < len(self.layers):
                x = out  # non-final layers pass the whole sequence on (return_sequences=True)
            else:
                H = layer.hidden_size
                if layer.bidirectional:
                    # forward's state after the last step, reverse's state after consuming
                    # the whole sequence (its output at t=0), concatenated
                    x = torch.cat([out[:, -1, :H], out[:, 0, H:]], dim=-1)
                else:
                    x = out[:, -1, :]
        return self.dense(x)  # logits


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def build_model(spec):
    layers = []
    for i, l in enumerate(spec["layers"]):
        cell = str(l["cell"]).lower()
        if cell not in ("lstm", "gru", "rnn"):
            fail(f"spec.layers[{i}].cell: unknown cell {l['cell']!r}")
        layers.append(dict(cell=cell, units=int(l["units"]), bidirectional=bool(l.get("bidirectional", False))))
    if not layers:
        fail("spec.layers is empty")
    return Ref(int(spec["vocab_size"]), int(spec["embedding_dim"]), layers)


def parse_ids(text):
    try:
        return [int(tok) for tok in text.replace(",", " ").split()]
    except ValueError as e:
        fail(f"token ids must be integers separated by spaces or commas: {e}")


def encode_text(text, vocabulary):
    if not vocabulary:
        fail("--text needs a model with a vocabulary (metadata.json has \"vocabulary\": null); pass token ids instead")
    kind = vocabulary.get("kind")
    if kind == "char":
        tokens = vocabulary["tokens"]
        index = {}
        for i, t in enumerate(tokens):
            index.setdefault(t, i)
        if "<unk>" not in index:
            unk = None
        else:
            unk = index["<unk>"]
        ids = []
        for ch in text:
            if ch in index:
                ids.append(index[ch])
            elif unk is not None:
                ids.append(unk)
            else:
                fail(f"character {ch!r} is not in the vocabulary, which has no <unk>")
        return ids
    if kind == "byte":
        return list(text.encode("utf-8"))
    fail(f"unknown vocabulary kind {kind!r}")


def token_label(i, vocabulary):
    if vocabulary and vocabulary.get("kind") == "char":
        tokens = vocabulary.get("tokens") or []
        if i < len(tokens):
            return repr(tokens[i])
    if vocabulary and vocabulary.get("kind") == "byte" and i < 256:
        return repr(bytes([i]))
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description="Next-token probabilities of an lstmd model, computed by PyTorch.")
    ap.add_argument("model_dir", help="folder with model.safetensors and metadata.json")
    ap.add_argument("ids", nargs="?", help='token ids, e.g. "1 2 3 4"')
    ap.add_argument("--text", help="text to encode with the model's vocabulary instead of ids")
    ap.add_argument("--json-only", action="store_true", help="print only the JSON, no top-5 line")
    ap.add_argument(
        "--whole-input",
        action="store_true",
        help="feed every token (Predict's whole_input) instead of the context the model expects",
    )
    args = ap.parse_args(argv)

    if (args.ids is None) == (args.text is None):
        fail("give either token ids or --text")

    with open(os.path.join(args.model_dir, "metadata.json"), encoding="utf-8") as f:
        metadata = json.load(f)
    spec = metadata["spec"]
    vocabulary = metadata.get("vocabulary")

    model = build_model(spec)
    state = load_file(os.path.join(args.model_dir, "model.safetensors"))
    model.load_state_dict(state, strict=True)  # casts to the module's float32 if stored otherwise
    model = model.double().eval()

    ids = parse_ids(args.ids) if args.text is None else encode_text(args.text, vocabulary)
    if not ids:
        fail("empty input")
    vocab = int(spec["vocab_size"])
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        fail(f"token ids out of range 0..{vocab - 1}: {bad}")

    # Like Predict: a window model reads the last `window` tokens (metadata's
    # "context"; models from before it have none and are window models too).
    context = metadata.get("context") or {"kind": "window", "window": spec["window"]}
    if context["kind"] == "window" and not args.whole_input:
        ids = ids[-int(context["window"]):]

    with torch.no_grad():
        logits = model(torch.tensor([ids], dtype=torch.int64))
        probs = torch.softmax(logits[0], dim=-1)

    print(json.dumps({"probabilities": [float(p) for p in probs.tolist()]}))
    if not args.json_only:
        top = torch.topk(probs, k=min(5, vocab))
        parts = []
        for p, i in zip(top.values.tolist(), top.indices.tolist()):
            label = token_label(i, vocabulary)
            parts.append(f"{i}{' ' + label if label else ''}: {p:.4f}")
        print("top 5: " + ", ".join(parts), file=sys.stderr)


if __name__ == "__main__":
    main()
