#!/usr/bin/env bash
# GQA testdev-balanced: accuracy, plus GQA-format predictions.
source "$(dirname "$0")/common.sh" "$@"
SPLIT="llava_gqa_testdev_balanced"
run_chunks llava.eval.model_vqa_loader "$EVAL_DIR/gqa/answers/$SPLIT/$CONFIG" \
    --question-file "$EVAL_DIR/gqa/$SPLIT.jsonl" --image-folder "$EVAL_DIR/gqa/data/images"
"$PYTHON" -m llava.eval.scorers.gqa \
    --questions "$EVAL_DIR/gqa/data/testdev_balanced_questions.json" \
    --result-file "$EVAL_DIR/gqa/answers/$SPLIT/$CONFIG/merge.jsonl" \
    --predictions-file "$EVAL_DIR/gqa/answers/$SPLIT/$CONFIG/testdev_balanced_predictions.json" \
    --result-json "$RESULTS_DIR/gqa.json"
