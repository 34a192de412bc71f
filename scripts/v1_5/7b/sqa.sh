#!/usr/bin/env bash
# ScienceQA test: option accuracy, SQA-IMG as the headline (questions without an image run unpruned).
source "$(dirname "$0")/common.sh" "$@"
run_chunks llava.eval.model_vqa_science "$EVAL_DIR/scienceqa/answers/$CONFIG" \
    --question-file "$EVAL_DIR/scienceqa/llava_test_CQM-A.json" \
    --image-folder "$EVAL_DIR/scienceqa/images/test" --single-pred-prompt
"$PYTHON" -m llava.eval.scorers.scienceqa \
    --base-dir "$EVAL_DIR/scienceqa" \
    --result-file "$EVAL_DIR/scienceqa/answers/$CONFIG/merge.jsonl" \
    --result-json "$RESULTS_DIR/sqa.json"
