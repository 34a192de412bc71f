#!/usr/bin/env bash
# VQAv2 test-dev: answers, then the submission JSON over the full test split (upload to EvalAI).
source "$(dirname "$0")/common.sh" "$@"
SPLIT="llava_vqav2_mscoco_test-dev2015"
run_chunks llava.eval.model_vqa_loader "$EVAL_DIR/vqav2/answers/$SPLIT/$CONFIG" \
    --question-file "$EVAL_DIR/vqav2/$SPLIT.jsonl" --image-folder "$EVAL_DIR/vqav2/test2015"
"$PYTHON" -m llava.eval.scorers.vqa_submission --benchmark vqav2 \
    --question-file "$EVAL_DIR/vqav2/llava_vqav2_mscoco_test2015.jsonl" \
    --result-file "$EVAL_DIR/vqav2/answers/$SPLIT/$CONFIG/merge.jsonl" \
    --output-file "$EVAL_DIR/vqav2/answers_upload/$SPLIT/$CONFIG.json" \
    --result-json "$RESULTS_DIR/vqav2.json"
