#!/usr/bin/env bash
# Head-selection ablation: fastv_fine_head over head strategy x head count x token budget, plus the dynamic
# selector per budget, on the chosen datasets; then the summary (with strategy x heads heatmaps).
#   DATASETS    (default "gqa pope mme textvqa")
#   STRATEGIES  (default: every strategy in llava.pruning.head_selection.HEAD_STRATEGIES)
#   HEADS_LIST  (default "8 16 24 32")
#   TOKENS      (default "64 128 192")
# Plus everything scripts/v1_5/7b/common.sh reads. Failures go to $EVAL_DIR/failed_configs.log; re-run resumes.
set -uo pipefail
SCRIPTS_DIR="$(cd "$(dirname "$0")" && pwd)/scripts/v1_5/7b"
PYTHON="${PYTHON:-python}"
EVAL_DIR="${EVAL_DIR:-./playground/data/eval}"
DATASETS="${DATASETS:-gqa pope mme textvqa}"
HEADS_LIST="${HEADS_LIST:-8 16 24 32}"
TOKENS="${TOKENS:-64 128 192}"
if [[ -z "${STRATEGIES:-}" ]]; then
    STRATEGIES="$("$PYTHON" -c 'from llava.pruning.head_selection import HEAD_STRATEGIES; print(" ".join(HEAD_STRATEGIES))')"
fi
export PYTHON EVAL_DIR
mkdir -p "$EVAL_DIR"

source "$SCRIPTS_DIR/run_config.sh"

for tokens in $TOKENS; do
    for heads in $HEADS_LIST; do
        for strategy in $STRATEGIES; do
            run_config fastv_fine_head "$tokens" "$heads" "$strategy"
        done
    done
    run_config dynamic "$tokens"
done
finish_ablation
