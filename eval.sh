#!/usr/bin/env bash
# Ablation driver: vanilla + every pruning method x token budgets on the chosen datasets, then the summary.
#   DATASETS  datasets to run (default "gqa pope mme textvqa sqa"; any of: vqav2 gqa vizwiz sqa textvqa pope
#             mme mmbench mmbench_cn mmvet)
#   METHODS   methods to run (default: every registered method except those in EXCLUDE_METHODS)
#   EXCLUDE_METHODS  (default "learned": it needs a trained pruner checkpoint)
#   TOKENS    budgets (default "64 128 192")
# Plus everything scripts/v1_5/7b/common.sh reads (MODEL_PATH, EVAL_DIR, PYTHON, CUDA_VISIBLE_DEVICES, ...).
# A failing configuration is logged to $EVAL_DIR/failed_configs.log and the run moves on; re-running resumes.
set -uo pipefail
SCRIPTS_DIR="$(cd "$(dirname "$0")" && pwd)/scripts/v1_5/7b"
PYTHON="${PYTHON:-python}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
DATASETS="${DATASETS:-gqa pope mme textvqa sqa}"
TOKENS="${TOKENS:-64 128 192}"
EXCLUDE_METHODS="${EXCLUDE_METHODS:-learned}"
if [[ -z "${METHODS:-}" ]]; then
    METHODS="$("$PYTHON" -c 'from llava.pruning.registry import available_methods; print(" ".join(available_methods()))')"
fi
export PYTHON EVAL_DIR
mkdir -p "$EVAL_DIR"

source "$SCRIPTS_DIR/run_config.sh"

run_config vanilla
for method in $METHODS; do
    if [[ " $EXCLUDE_METHODS " == *" $method "* ]]; then continue; fi
    for tokens in $TOKENS; do
        run_config "$method" "$tokens"
    done
done
finish_ablation
