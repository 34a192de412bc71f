#!/usr/bin/env bash
# TextVQA val (with OCR tokens in the prompt): VQA soft accuracy.
source "$(dirname "$0")/common.sh" "$@"
run_chunks llava.eval.model_vqa_loader "$EVAL_DIR/textvqa/answers/$CONFIG" \
    --question-file "$EVAL_DIR/textvqa/llava_textvqa_val_v051_ocr.jsonl" \
    --image-folder "$EVAL_DIR/textvqa/train_images"
"$PYTHON" -m llava.eval.scorers.textvqa \
    --annotation-file "$EVAL_DIR/textvqa/TextVQA_0.5.1_val.json" \
    --result-file "$EVAL_DIR/textvqa/answers/$CONFIG/merge.jsonl" \
    --result-json "$RESULTS_DIR/textvqa.json"
