#!/usr/bin/env bash
# The README's quick start as a script: talks to a running lstmd with grpcurl
# alone (server reflection, no .proto files). Exits non-zero if any step
# fails or the trained model does not predict its data's pattern.
#   GRPCURL     grpcurl binary (default: grpcurl)
#   LSTMD_ADDR  server address (default: 127.0.0.1:50051)
set -euo pipefail
GRPCURL=${GRPCURL:-grpcurl}
ADDR=${LSTMD_ADDR:-127.0.0.1:50051}
g() { "$GRPCURL" -plaintext -emit-defaults "$@"; }
fail() { echo "quickstart: FAILED: $*" >&2; exit 1; }

echo "== 1. the services, found by reflection"
services=$(g "$ADDR" list)
echo "$services"
for s in lstmd.v1.DatasetService lstmd.v1.JobService lstmd.v1.ModelService lstmd.v1.PredictionService; do
  grep -qx "$s" <<<"$services" || fail "reflection does not list $s"
done

echo "== 2. a small dataset: the cycle 0 1 2 3 4 5 6, repeated 100 times"
ids=$(for i in $(seq 0 699); do printf '%d,' $((i % 7)); done)
name="quickstart-$(date +%s)-$$"
dataset=$(g -d "{\"name\": \"$name\", \"ids\": {\"ids\": [${ids%,}], \"vocab_size\": 7}}" \
  "$ADDR" lstmd.v1.DatasetService/CreateDataset)
echo "$dataset" | grep -v preview
dataset_id=$(sed -n 's/^  "id": "\(.*\)",$/\1/p' <<<"$dataset")
[ -n "$dataset_id" ] || fail "CreateDataset returned no id"

echo "== 3. Train the 'deep' preset (LSTM 64 -> LSTM 64) on windows of 4, streaming progress"
g -d "{\"model_name\": \"$name\", \"dataset_id\": \"$dataset_id\",
      \"spec\": {\"preset\": \"deep\", \"window\": 4},
      \"config\": {\"epochs\": 12, \"batch_size\": 32, \"learning_rate\": 0.01, \"seed\": 7}}" \
  "$ADDR" lstmd.v1.JobService/Train | tee -a /dev/stderr >"${TMPDIR:-/tmp}/$name.events"
grep -q '"state": "JOB_STATE_SUCCEEDED"' "${TMPDIR:-/tmp}/$name.events" || fail "training did not succeed"
rm -f "${TMPDIR:-/tmp}/$name.events"

echo "== 4. Predict the token after 2 3 4 5 (the pattern says 6)"
prediction=$(g -d "{\"model\": \"$name\", \"sequences\": [{\"ids\": [2, 3, 4, 5]}], \"top_k\": 3}" \
  "$ADDR" lstmd.v1.PredictionService/Predict)
echo "$prediction"
top_id=$(grep -o '"id": [0-9]*' <<<"$prediction" | head -1 | grep -o '[0-9]*$')
top_p=$(grep -o '"probability": [0-9.e-]*' <<<"$prediction" | head -1 | awk '{print $2}')
[ "$top_id" = 6 ] || fail "expected token 6 first, got ${top_id:-nothing}"
awk -v p="$top_p" 'BEGIN { exit !(p > 0.5) }' || fail "token 6 has probability $top_p, expected > 0.5"

echo "== 5. Predict after inputs of every length 1..12 (3 windows): the cycle's next token"
# Predict reads the last 4 tokens (the training window; GetModel's context
# says so), and training scored every position, so 1..4 tokens work too.
seqs="" want=""
for len in $(seq 1 12); do
  for start in 0 3; do
    s=$(for i in $(seq "$start" $((start + len - 1))); do printf '%d,' $((i % 7)); done)
    seqs="$seqs{\"ids\": [${s%,}]},"
    want="$want $(((start + len) % 7))"
  done
done
answers=$(g -d "{\"model\": \"$name\", \"sequences\": [${seqs%,}], \"top_k\": 1}" \
  "$ADDR" lstmd.v1.PredictionService/Predict)
got=$(grep -o '"id": [0-9]*' <<<"$answers" | grep -o '[0-9]*$' | tr '\n' ' ')
[ "$got" = "${want# } " ] || fail "expected next tokens ${want# }, got $got"
echo "next tokens: $got"

echo "== 6. Greedy Generate from 0 1 2 (the cycle says 3 4 5 6 0 1 2 3)"
tokens=$(g -d "{\"model\": \"$name\", \"prompt\": {\"ids\": [0, 1, 2]}, \"max_tokens\": 8, \"temperature\": 0}" \
  "$ADDR" lstmd.v1.PredictionService/Generate | grep -o '"id": [0-9]*' | grep -o '[0-9]*$' | tr '\n' ' ')
[ "$tokens" = "3 4 5 6 0 1 2 3 " ] || fail "Generate gave $tokens"
echo "generated: $tokens"
echo "quickstart: OK (model $name predicts 6 with probability $top_p, every input length and Generate follow the cycle)"
