#!/usr/bin/env bash
# Sourced by eval.sh and eval_head.sh: run_config ARGS... runs every dataset in $DATASETS with the per-dataset
# script's arguments (METHOD TOKENS [HEADS STRATEGY]); a failure is logged and the ablation goes on.
run_config() {
    local dataset
    for dataset in $DATASETS; do
        echo "=== $dataset: $* ==="
        if ! bash "$SCRIPTS_DIR/$dataset.sh" "$@"; then
            echo "$(date -Is) $dataset $*" >> "$EVAL_DIR/failed_configs.log"
        fi
    done
}
