#!/usr/bin/env bash
# Sourced by eval.sh and eval_head.sh: run_config ARGS... runs every dataset in $DATASETS with the per-dataset
# script's arguments (METHOD TOKENS [HEADS STRATEGY]); a failure (a failed or incomplete run) is logged and
# counted, and the ablation goes on; finish_ablation summarises and exits non-zero with the count.
FAILED_RUNS=0
run_config() {
    local dataset
    for dataset in $DATASETS; do
        echo "=== $dataset: $* ==="
        if ! bash "$SCRIPTS_DIR/$dataset.sh" "$@"; then
            echo "$(date -Is) $dataset $*" >> "$EVAL_DIR/failed_configs.log"
            FAILED_RUNS=$((FAILED_RUNS + 1))
        fi
    done
}

# finish_ablation: the summary table, then exit 1 if any run failed or is incomplete (summarize's own code otherwise)
finish_ablation() {
    "$PYTHON" -m llava.eval.summarize --results-dir "$EVAL_DIR/results" --output-dir "$EVAL_DIR/summary"
    local summary_status=$?
    if [[ "$FAILED_RUNS" -gt 0 ]]; then
        echo "error: $FAILED_RUNS dataset run(s) failed or are incomplete (listed in $EVAL_DIR/failed_configs.log); re-run to resume" >&2
        exit 1
    fi
    exit "$summary_status"
}
