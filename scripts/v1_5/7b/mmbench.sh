#!/usr/bin/env bash
# MMBench dev (English): submission .xlsx (UPLOAD_FORMAT=tsv for a TSV); accuracy (circular with CIRCULAR=1) when the TSV has answers.
source "$(dirname "$0")/common.sh" "$@"
SPLIT="${SPLIT:-mmbench_dev_20230712}"
ROUNDS=(); if [[ "${CIRCULAR:-0}" == "1" ]]; then ROUNDS=(--all-rounds); fi
run_chunks llava.eval.model_vqa_mmbench "$EVAL_DIR/mmbench/answers/$SPLIT/$CONFIG" \
    --question-file "$EVAL_DIR/mmbench/$SPLIT.tsv" --single-pred-prompt --lang en "${ROUNDS[@]}"
"$PYTHON" -m llava.eval.scorers.mmbench --benchmark mmbench \
    --annotation-file "$EVAL_DIR/mmbench/$SPLIT.tsv" \
    --result-file "$EVAL_DIR/mmbench/answers/$SPLIT/$CONFIG/merge.jsonl" \
    --upload-file "$EVAL_DIR/mmbench/answers_upload/$SPLIT/$CONFIG.${UPLOAD_FORMAT:-xlsx}" \
    --result-json "$RESULTS_DIR/mmbench.json"
