#!/usr/bin/env bash
# VizWiz test: answers, then the submission JSON (upload to EvalAI).
source "$(dirname "$0")/common.sh" "$@"
run_chunks llava.eval.model_vqa_loader "$EVAL_DIR/vizwiz/answers/$CONFIG" \
    --question-file "$EVAL_DIR/vizwiz/llava_test.jsonl" --image-folder "$EVAL_DIR/vizwiz/test"
"$PYTHON" -m llava.eval.scorers.vqa_submission --benchmark vizwiz \
    --question-file "$EVAL_DIR/vizwiz/llava_test.jsonl" \
    --result-file "$EVAL_DIR/vizwiz/answers/$CONFIG/merge.jsonl" \
    --output-file "$EVAL_DIR/vizwiz/answers_upload/$CONFIG.json" \
    --result-json "$RESULTS_DIR/vizwiz.json"
