#!/usr/bin/env bash
# The README's "Upload a text file and train on it" as a script: streams a
# text file to a running lstmd with grpcurl (UploadDataset: a header message,
# then the file as base64 chunks, one JSON message per line on stdin), trains
# a small char-level LSTM on it, asks for next characters as text, and deletes
# the dataset. Exits non-zero if any step fails.
#   GRPCURL     grpcurl binary (default: grpcurl)
#   LSTMD_ADDR  server address (default: 127.0.0.1:50051)
#   TEXT_FILE   UTF-8 text to upload (default: tests/data/macbeth.txt)
set -euo pipefail
GRPCURL=${GRPCURL:-grpcurl}
ADDR=${LSTMD_ADDR:-127.0.0.1:50051}
TEXT_FILE=${TEXT_FILE:-tests/data/macbeth.txt}
g() { "$GRPCURL" -plaintext -emit-defaults "$@"; }
fail() { echo "upload_text: FAILED: $*" >&2; exit 1; }
name="text-$(date +%s)-$$"

echo "== 1. UploadDataset: $TEXT_FILE in 64 KiB chunks, char tokenizer"
dataset=$(
  {
    echo "{\"header\": {\"name\": \"$name\", \"tokenizer\": \"TOKENIZER_CHAR\"}}"
    split -b 64K --filter='printf "{\"chunk\": \""; base64 -w0; printf "\"}\n"' "$TEXT_FILE"
  } | g -d @ "$ADDR" lstmd.v1.DatasetService/UploadDataset
)
echo "$dataset" | grep -v preview
dataset_id=$(sed -n 's/^  "id": "\(.*\)",$/\1/p' <<<"$dataset")
[ -n "$dataset_id" ] || fail "UploadDataset returned no id"
bytes=$(wc -c <"$TEXT_FILE" | tr -d ' ')
grep -q "\"sourceBytes\": \"$bytes\"" <<<"$dataset" || fail "the server did not receive all $bytes bytes"

echo "== 2. Train a char LSTM (embedding 8, LSTM 32, windows of 8 characters), one epoch"
g -d "{\"model_name\": \"$name\", \"dataset_id\": \"$dataset_id\",
      \"spec\": {\"embedding_dim\": 8, \"window\": 8, \"layers\": [{\"cell\": \"CELL_LSTM\", \"units\": 32}]},
      \"config\": {\"epochs\": 1, \"batch_size\": 32, \"learning_rate\": 0.01, \"seed\": 1}}" \
  "$ADDR" lstmd.v1.JobService/Train >"${TMPDIR:-/tmp}/$name.events"
grep -A9 '"metrics"' "${TMPDIR:-/tmp}/$name.events" || true
grep -q '"state": "JOB_STATE_SUCCEEDED"' "${TMPDIR:-/tmp}/$name.events" || {
  cat "${TMPDIR:-/tmp}/$name.events" >&2
  fail "training did not succeed"
}
rm -f "${TMPDIR:-/tmp}/$name.events"

echo "== 3. Predict: text in, the likeliest next characters out"
prediction=$(g -d "{\"model\": \"$name\", \"sequences\": [{\"text\": \"Fair is foul, an\"}], \"top_k\": 3}" \
  "$ADDR" lstmd.v1.PredictionService/Predict)
echo "$prediction"
[ "$(grep -c '"text": ' <<<"$prediction")" = 3 ] || fail "Predict did not answer with 3 characters as text"

echo "== 4. DeleteDataset (the model keeps its copy of the vocabulary)"
g -d "{\"id\": \"$dataset_id\"}" "$ADDR" lstmd.v1.DatasetService/DeleteDataset
g -d "{\"model\": \"$name\", \"sequences\": [{\"text\": \"MACBET\"}], \"top_k\": 1}" \
  "$ADDR" lstmd.v1.PredictionService/Predict | grep -q '"text": ' || fail "the model lost its vocabulary"
echo "upload_text: OK (dataset $dataset_id, model $name)"
