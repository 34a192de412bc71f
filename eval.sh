#!/usr/bin/env bash
# Ablation driver: vanilla + every pruning method x token budgets on the chosen datasets, then the summary.
#   DATASETS  datasets to run (default "gqa pope mme textvqa sqa"; any of: vqav2 gqa vizwiz sqa textvqa pope
#             mme mmbench mmbench_cn mmvet)
#   METHODS   methods to run (default: every registered method except those in EXCLUDE_METHODS)
#   EXCLUDE_METHODS  methods left out (default: none)
#   TOKENS    budgets (default "64 128 192")
# Plus everything scripts/v1_5/7b/common.sh reads (MODEL_PATH, EVAL_DIR, PYTHON, CUDA_VISIBLE_DEVICES, ...).
# The configurations are planned on the model first (python -m llava.eval.ablation_plan methods, which says
# what it changes): a method that needs a checkpoint the model does not ship is left out (learned_merger
# always; learned at a budget without learned_pruner_t<T>.pt), a default head count above the model's heads
# (fastv_fine_head's 16 on a 2-head model) is clamped with a warning, and a configuration the loader would
# refuse stops the driver before any run.
# A failing configuration is logged to $EVAL_DIR/failed_configs.log and the run moves on; re-running resumes.
set -uo pipefail
SCRIPTS_DIR="$(cd "$(dirname "$0")" && pwd)/scripts/v1_5/7b"
PYTHON="${PYTHON:-python}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
MODEL_PATH="${MODEL_PATH:-llava-hf/llava-1.5-7b-hf}"
DATASETS="${DATASETS:-gqa pope mme textvqa sqa}"
TOKENS="${TOKENS:-64 128 192}"
EXCLUDE_METHODS="${EXCLUDE_METHODS:-}"
# shellcheck disable=SC2086  # word lists
PLAN="$("$PYTHON" -m llava.eval.ablation_plan methods --model-path "$MODEL_PATH" --tokens $TOKENS \
    --methods ${METHODS:-} --exclude $EXCLUDE_METHODS)" || exit $?
mapfile -t RUNS <<< "$PLAN"
export PYTHON EVAL_DIR MODEL_PATH
mkdir -p "$EVAL_DIR"

source "$SCRIPTS_DIR/run_config.sh"

run_config vanilla
for run in "${RUNS[@]}"; do
    # shellcheck disable=SC2086  # METHOD TOKENS [HEADS]
    [[ -n "$run" ]] && run_config $run
done
finish_ablation
