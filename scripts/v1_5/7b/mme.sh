#!/usr/bin/env bash
# MME: perception and cognition scores (acc + acc+ per subtask).
source "$(dirname "$0")/common.sh" "$@"
run_chunks llava.eval.model_vqa_loader "$EVAL_DIR/MME/answers/$CONFIG" \
    --question-file "$EVAL_DIR/MME/llava_mme.jsonl" \
    --image-folder "$EVAL_DIR/MME/MME_Benchmark_release_version"
"$PYTHON" -m llava.eval.scorers.mme \
    --gt-dir "$EVAL_DIR/MME/MME_Benchmark_release_version" \
    --result-file "$EVAL_DIR/MME/answers/$CONFIG/merge.jsonl" \
    --result-json "$RESULTS_DIR/mme.json"
