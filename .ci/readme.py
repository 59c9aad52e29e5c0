#!/usr/bin/env python3
"""README.md's commands, for .ci/readme.sh to run as written.

    readme.py top N              the Nth command (1-based) of README's first sh block
    readme.py blocks             every sh block that calls grpcurl or lstmd, as one
                                 bash script: an `echo` naming the block's line, then
                                 the block verbatim
    readme.py record STATE       reads grpcurl output on stdin; remembers the dataset,
                                 job and session ids it holds in the STATE file
    readme.py subst STATE ARG    ARG with `ds-…`, `job-…` and `sess-…` replaced by the
                                 ids earlier answers gave, as the README tells a reader
    readme.py failed             reads grpcurl output on stdin; exits 1 if a job in it
                                 ended failed or cancelled

Standard library only: CI's Python has nothing else.
"""

import json
import os
import re
import sys

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")

# Blocks that need what CI does not have (a container engine, a cluster) or
# that install tools CI installs itself.
SKIP = re.compile(r"\b(kubectl|docker|kustomize|pip install)\b")
# A command word grpcurl or lstmd (`GRPCURL=grpcurl bash script` included).
CALLS = re.compile(r"(^|[|;&{(=]\s*|\$\()\s*(grpcurl|lstmd)\s")


def sh_blocks():
    """(first line number, text) of each ```sh block."""
    blocks, current, start = [], None, 0
    with open(README, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if current is None:
                if line.strip() == "```sh":
                    current, start = [], number + 1
            elif line.strip() == "```":
                blocks.append((start, "".join(current)))
                current = None
            else:
                current.append(line)
    return blocks


def top(n):
    _, text = sh_blocks()[0]
    commands = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    commands = [c for c in commands if c]
    print(commands[n - 1])


def runnable(text):
    return not SKIP.search(text) and any(CALLS.search(line) for line in text.splitlines())


def blocks():
    for start, text in sh_blocks()[1:]:
        if runnable(text):
            print(f"echo '== README.md line {start}'")
            print(text)


def documents(text):
    """The JSON documents grpcurl printed, one after another."""
    decoder, at, out = json.JSONDecoder(), 0, []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return out
        try:
            doc, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return out
        out.append(doc)


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {"datasets": [], "job": None, "session": None}


def record(path):
    state = load(path)
    for doc in documents(sys.stdin.read()):
        if not isinstance(doc, dict):
            continue
        ident = doc.get("id", "")
        if ident.startswith("ds-"):
            state["datasets"].append([doc.get("name", ""), ident])
        elif ident.startswith("job-"):
            state["job"] = ident
        if str(doc.get("sessionId", "")).startswith("sess-"):
            state["session"] = doc["sessionId"]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(state, f)


def dataset_for(state, arg):
    """The dataset a request means: the newest whose name starts the
    request's model name (models are named after their data here), else the
    newest."""
    datasets = state["datasets"]
    if not datasets:
        sys.exit("readme.py: `ds-…` before any dataset was created")
    model = re.search(r'"model_name":\s*"([^"]*)"', arg)
    if model:
        for name, ident in reversed(datasets):
            if name and model.group(1).startswith(name):
                return ident
    return datasets[-1][1]


def subst(path, arg):
    state = load(path)
    if "ds-…" in arg:
        arg = arg.replace("ds-…", dataset_for(state, arg))
    if "job-…" in arg and state["job"]:
        arg = arg.replace("job-…", state["job"])
    if "sess-…" in arg and state["session"]:
        arg = arg.replace("sess-…", state["session"])
    sys.stdout.write(arg)


def failed():
    for doc in documents(sys.stdin.read()):
        finished = doc.get("finished") if isinstance(doc, dict) else None
        if finished and finished.get("state") in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
            print(f"readme.py: the job ended {finished['state']}: {finished.get('reason', '')}",
                  file=sys.stderr)
            sys.exit(1)


def main(argv):
    command = argv[1] if len(argv) > 1 else ""
    if command == "top" and len(argv) == 3:
        top(int(argv[2]))
    elif command == "blocks" and len(argv) == 2:
        blocks()
    elif command == "record" and len(argv) == 3:
        record(argv[2])
    elif command == "subst" and len(argv) == 4:
        subst(argv[2], argv[3])
    elif command == "failed" and len(argv) == 2:
        failed()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
