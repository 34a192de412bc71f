#!/usr/bin/env bash
# MMBench-CN dev: submission .xlsx (UPLOAD_FORMAT=tsv for a TSV); accuracy (circular with CIRCULAR=1) when the TSV has answers.
source "$(dirname "$0")/common.sh" "$@"
SPLIT="${SPLIT:-mmbench_dev_cn_20231003}"
ROUNDS=(); if [[ "${CIRCULAR:-0}" == "1" ]]; then ROUNDS=(--all-rounds); fi
run_chunks llava.eval.model_vqa_mmbench "$EVAL_DIR/mmbench_cn/answers/$SPLIT/$CONFIG" \
    --question-file "$EVAL_DIR/mmbench_cn/$SPLIT.tsv" --single-pred-prompt --lang cn "${ROUNDS[@]}"
"$PYTHON" -m llava.eval.scorers.mmbench --benchmark mmbench_cn \
    --annotation-file "$EVAL_DIR/mmbench_cn/$SPLIT.tsv" \
    --result-file "$EVAL_DIR/mmbench_cn/answers/$SPLIT/$CONFIG/merge.jsonl" \
    --upload-file "$EVAL_DIR/mmbench_cn/answers_upload/$SPLIT/$CONFIG.${UPLOAD_FORMAT:-xlsx}" \
    --result-json "$RESULTS_DIR/mmbench_cn.json"
