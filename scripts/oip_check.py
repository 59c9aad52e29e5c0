"""The Open Inference Protocol (KServe v2) against a running lstmd, with
Triton's own Python client (PyPI `tritonclient[grpc]`), as CI runs it:

    python scripts/oip_check.py --server 127.0.0.1:50051 --lstmd target/release/lstmd

It trains a small model through the lstmd CLI, then checks server and
model metadata and readiness, that ModelInfer's probabilities equal
Predict's to 1e-6 (by version number, by label and for the latest), and that
bad shapes and data types are answered INVALID_ARGUMENT. Exits non-zero on
the first failure.
"""
import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

MODEL = "oip-check"
PERIOD = 7


def lstmd(binary, server, *args):
    out = subprocess.run(
        [binary, *args, "--server", server, "--output", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def train(binary, server):
    with tempfile.NamedTemporaryFile(suffix=".ids", delete=False) as f:
        f.write(struct.pack("<%dI" % 700, *[i % PERIOD for i in range(700)]))
        path = f.name
    lstmd(binary, server, "datasets", "upload", path, "--name", MODEL,
          "--tokenizer", "ids", "--vocab-size", str(PERIOD))
    lstmd(binary, server, "train", "--dataset", MODEL, "--name", MODEL,
          "--embedding-dim", "8", "--window", "4", "--layer", "lstm:16",
          "--epochs", "3", "--batch-size", "32", "--learning-rate", "0.02",
          "--seed", "1")


def predict(binary, server, rows, k):
    inputs = [",".join(str(i) for i in row) for row in rows]
    answer = lstmd(binary, server, "predict", "--model", MODEL, "--ids",
                   "--top-k", str(k), *inputs)[-1]
    return [[(t.get("id", 0), t["probability"]) for t in p["top"]]
            for p in answer["predictions"]]


def expect_invalid(client, what, inputs, **kw):
    try:
        client.infer(MODEL, inputs, **kw)
    except InferenceServerException as e:
        assert e.status() == "StatusCode.INVALID_ARGUMENT", (what, e.status(), e.message())
        assert e.message(), what
        print(f"ok: {what}: INVALID_ARGUMENT: {e.message()}")
        return
    raise AssertionError(f"{what}: accepted")


def tensor(name, array, datatype):
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", default="127.0.0.1:50051")
    p.add_argument("--lstmd", default="target/release/lstmd")
    a = p.parse_args()

    client = grpcclient.InferenceServerClient(url=a.server)
    assert client.is_server_live(), "server live"
    assert client.is_server_ready(), "server ready"
    meta = client.get_server_metadata()
    assert meta.name == "lstmd", meta
    train(a.lstmd, a.server)
    lstmd(a.lstmd, a.server, "label", MODEL, "stable", "1")

    for _ in range(100):  # ModelReady starts the load; ready once run once
        if client.is_model_ready(MODEL):
            break
        time.sleep(0.1)
    assert client.is_model_ready(MODEL), "model ready"
    assert client.is_model_ready(MODEL, "1") and client.is_model_ready(MODEL, "stable")
    m = client.get_model_metadata(MODEL)
    assert m.name == MODEL and list(m.versions) == ["1"], m
    assert [o.name for o in m.outputs][0] == "probabilities", m
    assert list(m.outputs[0].shape) == [-1, PERIOD], m
    print("ok: live, ready, server and model metadata")

    rows = [[0, 1, 2, 3], [3, 4, 5, 6], [6, 0, 1, 2]]
    k = PERIOD
    want = predict(a.lstmd, a.server, rows, k)
    for dtype, datatype in [(np.int64, "INT64"), (np.int32, "INT32")]:
        for version in ["", "1", "stable"]:
            ids = tensor("input_ids", np.array(rows, dtype=dtype), datatype)
            top = [grpcclient.InferRequestedOutput("top_k_ids"),
                   grpcclient.InferRequestedOutput("top_k_probabilities"),
                   grpcclient.InferRequestedOutput("probabilities")]
            r = client.infer(MODEL, [ids], model_version=version, outputs=top,
                             parameters={"top_k": k}, request_id="req-1")
            assert r.get_response().id == "req-1"
            assert r.get_response().model_version == "1"
            probs = r.as_numpy("probabilities")
            assert probs.shape == (3, PERIOD) and probs.dtype == np.float32, probs
            top_ids, top_p = r.as_numpy("top_k_ids"), r.as_numpy("top_k_probabilities")
            for i, row in enumerate(want):
                for j, (tid, tp) in enumerate(row):
                    assert abs(float(probs[i][tid]) - tp) <= 1e-6, (i, tid, probs[i][tid], tp)
                    assert abs(float(top_p[i][j]) - tp) <= 1e-6, (i, j, top_p[i][j], tp)
                    assert int(top_ids[i][j]) == tid, (i, j, top_ids[i][j], tid)
    print("ok: ModelInfer equals Predict to 1e-6 (INT64 and INT32; latest, version, label)")

    expect_invalid(client, "FP32 ids", [tensor("input_ids", np.zeros((1, 4), np.float32), "FP32")])
    expect_invalid(client, "1-D shape", [tensor("input_ids", np.zeros((4,), np.int64), "INT64")])
    expect_invalid(client, "id past the vocabulary",
                   [tensor("input_ids", np.array([[1, 99]], np.int64), "INT64")])
    expect_invalid(client, "negative id", [tensor("input_ids", np.array([[-1, 2]], np.int64), "INT64")])
    expect_invalid(client, "two inputs", [tensor("a", np.zeros((1, 2), np.int64), "INT64"),
                                          tensor("b", np.zeros((1, 2), np.int64), "INT64")])
    expect_invalid(client, "unknown output",
                   [tensor("input_ids", np.zeros((1, 2), np.int64), "INT64")],
                   outputs=[grpcclient.InferRequestedOutput("logits")])
    try:
        client.infer("no-such-model", [tensor("input_ids", np.zeros((1, 2), np.int64), "INT64")])
        raise AssertionError("unknown model accepted")
    except InferenceServerException as e:
        assert e.status() == "StatusCode.NOT_FOUND", e.status()
    print("OIP check passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"OIP check FAILED: {e}", file=sys.stderr)
        sys.exit(1)
