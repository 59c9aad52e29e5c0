#!/usr/bin/env bash
# The README's CLI walkthrough, step by step, against a running server
# (LSTMD_SERVER, default 127.0.0.1:50051). CI runs it; it fails if a step
# fails or the trained model does not predict its text.
#   LSTMD=target/release/lstmd bash examples/cli_walkthrough.sh
set -euo pipefail
cd "$(dirname "$0")/.."
LSTMD=${LSTMD:-target/release/lstmd}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$LSTMD" datasets upload tests/data/macbeth.txt --name macbeth-cli
"$LSTMD" datasets list

# A char-level LSTM; a line per epoch (a live bar on a terminal).
"$LSTMD" train --dataset macbeth-cli --name macbeth-cli \
  --embedding-dim 16 --window 16 --layer lstm:64 \
  --epochs 2 --batch-size 64 --learning-rate 0.01 --validation-split 0.1 \
  --early-stopping 2 --restore-best-weights --seed 1

"$LSTMD" models show macbeth-cli
"$LSTMD" predict --model macbeth-cli --top-k 3 "Fair is foul, an"
"$LSTMD" predict --model macbeth-cli --top-k 1 "Fair is foul, an" | grep -q '^   1  "d"' \
  || { echo "the model should continue 'Fair is foul, an' with 'd'" >&2; exit 1; }
"$LSTMD" generate --model macbeth-cli --max-tokens 80 --temperature 0.7 --seed 1 "Macbeth. "

"$LSTMD" plot --model macbeth-cli -o "$out/curves.svg"
"$LSTMD" models export macbeth-cli -d "$out/export"
ls "$out/export"
"$LSTMD" jobs list --state succeeded
"$LSTMD" models list --output json
