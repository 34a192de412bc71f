#!/usr/bin/env bash
# MM-Vet: answers, then the JSON for MM-Vet's GPT-4 grader.
source "$(dirname "$0")/common.sh" "$@"
run_chunks llava.eval.model_vqa "$EVAL_DIR/mm-vet/answers/$CONFIG" \
    --question-file "$EVAL_DIR/mm-vet/llava-mm-vet.jsonl" --image-folder "$EVAL_DIR/mm-vet/images"
"$PYTHON" -m llava.eval.scorers.mmvet \
    --result-file "$EVAL_DIR/mm-vet/answers/$CONFIG/merge.jsonl" \
    --question-file "$EVAL_DIR/mm-vet/llava-mm-vet.jsonl" \
    --output-file "$EVAL_DIR/mm-vet/grader_input/$CONFIG.json" \
    --result-json "$RESULTS_DIR/mmvet.json"
