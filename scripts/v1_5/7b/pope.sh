#!/usr/bin/env bash
# POPE (adversarial/popular/random): accuracy, precision, recall, F1 per split and mean F1.
source "$(dirname "$0")/common.sh" "$@"
run_chunks llava.eval.model_vqa_loader "$EVAL_DIR/pope/answers/$CONFIG" \
    --question-file "$EVAL_DIR/pope/llava_pope_test.jsonl" --image-folder "$EVAL_DIR/pope/val2014"
"$PYTHON" -m llava.eval.scorers.pope \
    --annotation-dir "$EVAL_DIR/pope/coco" \
    --question-file "$EVAL_DIR/pope/llava_pope_test.jsonl" \
    --result-file "$EVAL_DIR/pope/answers/$CONFIG/merge.jsonl" \
    --result-json "$RESULTS_DIR/pope.json"
