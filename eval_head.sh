#!/usr/bin/env bash
# Head-selection ablation: fastv_fine_head over head strategy x head count x token budget, plus the dynamic
# selector per budget, on the chosen datasets; then the summary (with strategy x heads heatmaps).
#   DATASETS    (default "gqa pope mme textvqa")
#   STRATEGIES  (default: every strategy in llava.pruning.head_selection.HEAD_STRATEGIES)
#   HEADS_LIST  (default: a quarter, half, three quarters and all of the model's heads per layer: "8 16 24 32"
#               on LLaVA-1.5-7B, "1 2" on the shipped shapes VLM); a count above the model's heads is clamped
#               to them with a warning
#   TOKENS      (default "64 128 192")
# Plus everything scripts/v1_5/7b/common.sh reads. The configurations are planned on the model first
# (python -m llava.eval.ablation_plan heads); one the loader would refuse stops the driver before any run.
# Failures go to $EVAL_DIR/failed_configs.log; re-run resumes.
set -uo pipefail
SCRIPTS_DIR="$(cd "$(dirname "$0")" && pwd)/scripts/v1_5/7b"
PYTHON="${PYTHON:-python}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
MODEL_PATH="${MODEL_PATH:-llava-hf/llava-1.5-7b-hf}"
DATASETS="${DATASETS:-gqa pope mme textvqa}"
TOKENS="${TOKENS:-64 128 192}"
# shellcheck disable=SC2086  # word lists
PLAN="$("$PYTHON" -m llava.eval.ablation_plan heads --model-path "$MODEL_PATH" --tokens $TOKENS \
    --heads ${HEADS_LIST:-} --strategies ${STRATEGIES:-})" || exit $?
mapfile -t RUNS <<< "$PLAN"
export PYTHON EVAL_DIR MODEL_PATH
mkdir -p "$EVAL_DIR"

source "$SCRIPTS_DIR/run_config.sh"

for run in "${RUNS[@]}"; do
    # shellcheck disable=SC2086  # METHOD TOKENS [HEADS STRATEGY]
    [[ -n "$run" ]] && run_config $run
done
finish_ablation
