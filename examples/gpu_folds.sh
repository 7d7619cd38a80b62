#!/usr/bin/env bash
# Out-of-fold training on one CUDA GPU: two recipes on each of the three DL19 splits, trained
# side by side under a time budget, then each model scored on its split's held-out queries.
#
#   bash examples/gpu_folds.sh prepare   # here: wheels (gpu_check.sh prepare) and the data
#   bash examples/gpu_folds.sh           # on the GPU machine: install, train, evaluate
#
# prepare needs the inverse-cloze sets runs/ict20-<split> of examples/inverse_cloze.py
# (--per-query 20) for every split of SPLITS (default: seed0 fold1 fold2, the splits of
# examples/results/split-<split>.json) and the MiniLM run runs/dl19-minilm.run of
# examples/teacher_run.py; it packs them into .whl/train-data.tgz. SPLITS may add "all"
# (split-all.json: every DL19 query trains, none is held out): its runs train beside the
# folds' and are packed like theirs, but not evaluated, so that the model to ship can be
# trained on all the judged queries in the same GPU time as the folds that measure its recipe.
#
# The recipes, each from SmolLM2-135M-Instruct with LoRA r=16 in bfloat16:
#   vote:  POINTWISE_MINUTES (default 3) of the pointwise objective (one prompt a passage,
#          scored by the ' yes' logit), then VOTE_MINUTES (default 2) of FIRST's loss in the
#          first-judge template with RankNet on each passage's ' yes' vote and the pointwise
#          loss kept beside it (--pointwise-weight 1), saved to rank by votes;
#   first: POINTWISE_MINUTES + VOTE_MINUTES of FIRST's loss plus the vote RankNet in the same
#          template, from the base, saved to rank by FIRST's readout.
# Each model is the last update of its run, fixed in advance: validation scores are logged, not
# used to choose. heldout_eval.py then scores each on its split's held-out queries (BM25 and
# reversed order, EVAL_DEPTH candidates, default 100; fused with BM25 at K=60): the vote
# models by votes in disjoint windows, the first models by FIRST's readout in sliding windows
# and by votes, as given and with --order-invariant. fold_summary.py pools each
# configuration's three splits.
#
# RECIPES (default "vote first") picks the recipes; FIRST_UPDATES also ends each first run at
# that update (--stop-after). DEVICE (default cuda), DTYPE (default bfloat16) and
# BATCH_WINDOWS (listwise windows a forward pass, default 4) let the same script run a short
# check on a CPU.
#
# Each run starts from an empty $WORK (/tmp/llmrank-folds). Into $OUT (default
# runs/gpu-folds): results.tgz (records, training.json files, logs) and
# every split's models as tar parts of at most 15 MiB (adapter-<split>-<recipe>.tar.part-*),
# so that each can be scored again later under other reading settings.
cd "$(dirname "$0")/.."
# shellcheck source=examples/gpu_check.sh
source examples/gpu_check.sh
set +e -uo pipefail  # a failed run is logged; the others go on

SPLITS=(${SPLITS:-seed0 fold1 fold2})
RECIPES=(${RECIPES:-vote first})
DATA=/tmp/llmrank-train-data
WORK=/tmp/llmrank-folds

llmrank() {
    "$PYTHON" -c 'import sys; from haystack_llmrank.cli import main; sys.exit(main())' "$@"
}

wants() { [[ " ${RECIPES[*]} " == *" $1 "* ]]; }

prepare_data() {
    local split paths=(runs/dl19-minilm.run)
    for split in "${SPLITS[@]}"; do paths+=("runs/ict20-$split"); done
    ORT_GPU_VERSION=none prepare
    tar -czf "$WHEELS/train-data.tgz" "${paths[@]}"
    ls -l "$WHEELS/train-data.tgz"
}

train_split() {
    # Trains the recipes on split $1 into $WORK/$1, side by side.
    local split="$1" ict="$DATA/runs/ict20-$1"
    local minutes=("${POINTWISE_MINUTES:-3}" "${VOTE_MINUTES:-2}")
    local common=(
        "$ict/candidates.jsonl" --qrels "$ict/qrels.txt" --teacher "$ict/teacher.run"
        --split "$ict/split.json" --device "${DEVICE:-cuda}" --dtype "${DTYPE:-bfloat16}"
        --threads 2 --pool 30 --max-passage-words 48 --validation-passage-words 48 --steps 1000000
        --eval-every 1000000 --checkpoint-every 1000000 --min-lr-ratio 1
    )
    local listwise=(
        --template examples/templates/first-judge.json --passage-vote ' yes'
        --grad-accumulation 8 --batch-windows "${BATCH_WINDOWS:-4}" --min-window 8
        --max-window 20 --ranknet-weight 10 --passage-ranknet-weight 10 --validation-depth 20
        --max-prompt-tokens 4096  # the template repeats the query on every passage's line
    )
    wants vote && (
        llmrank train "${common[@]}" --objective pointwise --passage-vote ' yes' \
            --max-minutes "${minutes[0]}" --grad-accumulation 4 --min-window 8 --max-window 8 \
            --contiguous 0 --learning-rate 5e-4 --warmup-steps 0 --max-grad-norm 1e6 \
            --validation-depth 100 --output "$WORK/$split/pointwise" \
            && llmrank train "${common[@]}" "${listwise[@]}" --rank-by-vote \
                --pointwise-weight 1 --init-adapter "$WORK/$split/pointwise/checkpoint/model" \
                --max-minutes "${minutes[1]}" --learning-rate 2e-4 --warmup-steps 10 \
                --output "$WORK/$split/vote"
    ) >"$WORK/logs/$split-vote.log" 2>&1 &
    wants first && llmrank train "${common[@]}" "${listwise[@]}" \
        ${FIRST_UPDATES:+--stop-after "$FIRST_UPDATES"} \
        --max-minutes "$(awk "BEGIN { print ${minutes[0]} + ${minutes[1]} }")" \
        --learning-rate 3e-4 --warmup-steps 20 --output "$WORK/$split/first" \
        >"$WORK/logs/$split-first.log" 2>&1 &
}

held_out() {
    # Whether split $1 holds queries out (split-all.json holds none).
    "$PYTHON" -c 'import json, sys; sys.exit(not json.load(open(sys.argv[1]))["validation"])' \
        "examples/results/split-$1.json"
}

evaluate_split() {
    # Scores split $1's models on its held-out queries, side by side.
    local split="$1" records="$WORK/records"
    held_out "$split" || return 0
    local common=(
        --split "examples/results/split-$split.json" --candidates "$DATA/dl19/candidates.jsonl"
        --qrels "$DATA/dl19/qrels.txt" --teacher "$DATA/runs/dl19-minilm.run"
        --device "${DEVICE:-cuda}" --threads 2 --orders bm25 reversed
        --depth "${EVAL_DEPTH:-100}" --fusion-k 60
    )
    heldout() { "$PYTHON" examples/heldout_eval.py "$@"; }
    wants vote && heldout "${common[@]}" --model "$WORK/$split/vote/checkpoint/model" \
        --vote ' yes' --strategy disjoint --json "$records/$split-vote-votes.json" \
        >"$WORK/logs/$split-eval-vote-votes.log" 2>&1 &
    wants first && heldout "${common[@]}" --model "$WORK/$split/first/checkpoint/model" \
        --strategy sliding --json "$records/$split-first-sliding.json" \
        >"$WORK/logs/$split-eval-first.log" 2>&1 &
    wants first && heldout "${common[@]}" --model "$WORK/$split/first/checkpoint/model" \
        --vote ' yes' --strategy disjoint --json "$records/$split-first-votes.json" \
        >"$WORK/logs/$split-eval-first-votes.log" 2>&1 &
    wants first && heldout "${common[@]}" --model "$WORK/$split/first/checkpoint/model" \
        --vote ' yes' --strategy disjoint --order-invariant \
        --json "$records/$split-first-votes-order-invariant.json" \
        >"$WORK/logs/$split-eval-first-votes-order-invariant.log" 2>&1 &
}

folds() {
    local out="${OUT:-runs/gpu-folds}" split name started
    # a fresh $WORK: llmrank train refuses an earlier run's folder, and an earlier run's
    # models and records would be scored and pooled as this run's
    rm -rf "$WORK"
    mkdir -p "$out" "$WORK/logs" "$WORK/records" "$DATA"
    if [[ "${DEVICE:-cuda}" == cuda ]]; then install_wheels || return $?; fi
    tar -xzf "$WHEELS/train-data.tgz" -C "$DATA"
    rm -rf "$DATA/dl19" && cp -r "${LLMRANK_DL19_DIR:-$WHEELS/trec-dl19}" "$DATA/dl19"
    export HF_HUB_OFFLINE=1 LLMRANK_CACHE_DIR=/tmp/llmrank-cache PYTHONUNBUFFERED=1
    # dequantise the GGUF file once, before the runs share its cache
    local base=smollm2-135m-instruct
    "$PYTHON" -c "from haystack_llmrank import Reranker; Reranker.from_pretrained('$base')" \
        || return 1
    started=$(date +%s)
    for split in "${SPLITS[@]}"; do train_split "$split"; done
    wait
    echo "training: $(($(date +%s) - started)) s"
    started=$(date +%s)
    for split in "${SPLITS[@]}"; do evaluate_split "$split"; done
    wait
    echo "evaluation: $(($(date +%s) - started)) s"
    for name in vote-votes first-sliding first-votes first-votes-order-invariant; do
        compgen -G "$WORK/records/*-$name.json" >/dev/null || continue
        "$PYTHON" examples/fold_summary.py "$WORK"/records/*-"$name".json \
            --json "$WORK/records/out-of-fold-$name.json" >/dev/null \
            || echo "no out-of-fold summary for $name"
    done
    for split in "${SPLITS[@]}"; do
        for name in pointwise vote first; do
            cp "$WORK/$split/$name/training.json" "$WORK/records/training-$split-$name.json" \
                2>/dev/null || echo "no training record for $split $name"
        done
    done
    tar -czf "$out/results.tgz" -C "$WORK" records logs
    for split in "${SPLITS[@]}"; do
        for name in vote first; do
            [[ -d "$WORK/$split/$name/checkpoint/model" ]] || continue
            tar -cf - -C "$WORK/$split/$name/checkpoint" model \
                | split -b 15m -d -a 1 - "$out/adapter-$split-$name.tar.part-"
        done
    done
    ls -l "$out"
}

case "${1:-folds}" in
    prepare) prepare_data ;;
    folds) folds ;;
    *) echo "usage: bash $0 [prepare|folds]" >&2; exit 2 ;;
esac
