#!/usr/bin/env bash
# Shared part of the per-dataset scripts; sourced as `source common.sh "$@"` with METHOD TOKENS HEADS [STRATEGY].
#   METHOD    vanilla (default), any registry name (fastv, fastv_fine_head, pdrop, ...), or "dynamic"
#             (dynamic head selection, --enable-dynamic-selection)
#   TOKENS    equivalent-token budget (64, 128, 192, ...); ignored for vanilla
#   HEADS     head count for fine-head methods (optional)
#   STRATEGY  head strategy for fine-head methods (optional; also $HEAD_STRATEGY)
# Environment: MODEL_PATH (llava-hf/llava-1.5-7b-hf), any checkpoint in either layout: llava-hf
#   (llava-hf/llava-1.5-7b-hf, llava-hf/llava-1.5-13b-hf) or the original LLaVA one (liuhaotian/llava-v1.5-7b,
#   liuhaotian/llava-v1.5-13b; its vision tower, openai/clip-vit-large-patch14-336, is read from the path
#   its config names), or the shipped playground/models/shapes-llava; EVAL_DIR (./playground/data/eval), PYTHON (python),
#   CONV_MODE (vicuna_v1), EXTRA_ARGS (more loader flags), CUDA_VISIBLE_DEVICES ("0,1,2,3": one chunk per GPU).
set -euo pipefail

METHOD="${1:-vanilla}"
TOKENS="${2:-}"
HEADS="${3:-}"
STRATEGY="${4:-${HEAD_STRATEGY:-}}"
MODEL_PATH="${MODEL_PATH:-llava-hf/llava-1.5-7b-hf}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
PYTHON="${PYTHON:-python}"
CONV_MODE="${CONV_MODE:-vicuna_v1}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
IFS=',' read -ra GPULIST <<< "${CUDA_VISIBLE_DEVICES:-0}"
CHUNKS=${#GPULIST[@]}

PRUNE_ARGS=()
case "$METHOD" in
    vanilla|none|"")
        CONFIG="vanilla" ;;
    *)
        if [[ -z "$TOKENS" ]]; then
            echo "usage: $0 METHOD TOKENS [HEADS] [STRATEGY] (TOKENS is required for $METHOD)" >&2
            exit 2
        fi
        if [[ "$METHOD" == "dynamic" ]]; then
            PRUNE_ARGS+=(--enable-dynamic-selection)
        else
            PRUNE_ARGS+=(--pruning_method "$METHOD")
        fi
        PRUNE_ARGS+=(--visual_token_num "$TOKENS")
        CONFIG="${METHOD}_t${TOKENS}"
        if [[ -n "$HEADS" ]]; then PRUNE_ARGS+=(--H "$HEADS"); CONFIG+="_h${HEADS}"; fi
        if [[ -n "$STRATEGY" ]]; then PRUNE_ARGS+=(--head-strategy "$STRATEGY"); CONFIG+="_${STRATEGY}"; fi
        ;;
esac
RESULTS_DIR="$EVAL_DIR/results/$CONFIG"

# run_chunks MODULE ANSWERS_DIR [loader flags...]: one process per GPU, then merge into ANSWERS_DIR/merge.jsonl
run_chunks() {
    local module="$1" answers_dir="$2"
    shift 2
    mkdir -p "$answers_dir"
    local pids=() idx
    for idx in $(seq 0 $((CHUNKS - 1))); do
        # shellcheck disable=SC2086  # EXTRA_ARGS is a list of flags
        CUDA_VISIBLE_DEVICES="${GPULIST[$idx]}" "$PYTHON" -m "$module" \
            --model-path "$MODEL_PATH" \
            --answers-file "$answers_dir/${CHUNKS}_${idx}.jsonl" \
            --num-chunks "$CHUNKS" --chunk-idx "$idx" \
            --temperature 0 --conv-mode "$CONV_MODE" \
            "${PRUNE_ARGS[@]}" "$@" $EXTRA_ARGS &
        pids+=("$!")
    done
    local failed=0 pid
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    if [[ "$failed" -ne 0 ]]; then
        echo "a chunk of $module failed for $CONFIG (answers so far are kept; re-run to resume)" >&2
        return 1
    fi
    "$PYTHON" -m llava.eval.chunking --answers-dir "$answers_dir" --num-chunks "$CHUNKS" --output "$answers_dir/merge.jsonl"
}
