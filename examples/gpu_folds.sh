#!/usr/bin/env bash
# Out-of-fold training on one CUDA GPU: two recipes on each of the three DL19 splits, trained
# side by side under a time budget, then each model scored on its split's held-out queries.
#
#   bash examples/gpu_folds.sh prepare   # here: wheels (gpu_check.sh prepare) and the data
#   bash examples/gpu_folds.sh           # on the GPU machine: install, train, evaluate
#
# prepare needs the inverse-cloze sets runs/ict20-<split> of examples/inverse_cloze.py
# (--per-query 20) for every split of SPLITS (default: seed0 fold1 fold2, the splits of
# examples/results/split-<split>.json), the MiniLM run runs/dl19-minilm.run of
# examples/teacher_run.py and the DL19 data (LLMRANK_DL19_DIR, as for gpu_check.sh); it
# refuses to start without them, then packs the runs into .whl/train-data.tgz. SPLITS may
# add "all" (split-all.json: every DL19 query trains, none is held out): its runs train
# beside the folds' and are packed like theirs, but not evaluated, so that the model to ship
# can be trained on all the judged queries in the same GPU time as the folds that measure
# its recipe.
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
# reversed order, EVAL_DEPTH candidates, default 100; fused with BM25 at K=60; passages cut at
# EVAL_PASSAGE_WORDS, default auto, the length the model records): the vote models by votes in
# disjoint windows, the first models by FIRST's readout in sliding windows and by votes, as
# given and with --order-invariant. A split is scored only where the held-out queries of its
# packed training split (ict20-<split>/split.json) are those of
# examples/results/split-<split>.json. fold_summary.py pools each configuration over the
# evaluated splits, only where every one of them has a complete record, into
# out-of-fold-<configuration>-<splits>.json, and checks that it holds all their held-out
# queries (--expect-queries).
#
# RECIPES (default "vote first") picks the recipes. FIRST_UPDATES, POINTWISE_UPDATES and
# VOTE_UPDATES end the first run, the pointwise stage and the vote stage at that update
# (--stop-after); the minutes still bound each run. MAX_PROMPT_TOKENS (default 4096) is the
# listwise runs' prompt budget: the recorded runs on split-seed0 and fold 2 trained under
# 2048, fold 1's first run under 4096. DEVICE (default cuda), DTYPE (default bfloat16) and
# BATCH_WINDOWS (listwise windows a forward pass, default 4) let the same script run a short
# check on a CPU.
#
# A time budget ends each run at whatever update the GPU's load allows, so to rerun a
# reported run, stop it at its recorded update count instead (training-gpu-*.json), with
# minutes to spare, one split at a time where the counts differ by split, and score at the
# 300 words a passage the recorded runs were read at, e.g.
#   SPLITS=seed0 RECIPES=first FIRST_UPDATES=319 MAX_PROMPT_TOKENS=2048 \
#       EVAL_PASSAGE_WORDS=300 POINTWISE_MINUTES=30 VOTE_MINUTES=30 bash examples/gpu_folds.sh
# (examples/results/training-experiments.md lists every run's count), then pool the splits'
# records with fold_summary.py --expect-queries 43.
#
# Each run starts from an empty $WORK (/tmp/llmrank-folds) and writes into a new folder of
# $OUT (default runs/gpu-folds) named by its start time, splits and recipes, so that no run
# overwrites another's: results.tgz (records, training.json files, logs) and every split's
# models as tar parts of at most 15 MiB (adapter-<split>-<recipe>.tar.part-*), so that each
# can be scored again later under other reading settings. A failed run, evaluation or record
# is logged and the others go on; the script then packs what there is and exits with 1.
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # this file's, also when a test sources it
# shellcheck source=examples/gpu_check.sh
source examples/gpu_check.sh
set +e -uo pipefail  # failures are collected in FAILED, and the others go on

SPLITS=(${SPLITS:-seed0 fold1 fold2})
RECIPES=(${RECIPES:-vote first})
DATA=/tmp/llmrank-train-data
WORK=/tmp/llmrank-folds
ORDERS=(bm25 reversed)  # the input orders every record must hold
FAILED=()
JOBS=()
JOB_NAMES=()

llmrank() {
    "$PYTHON" -c 'import sys; from haystack_llmrank.cli import main; sys.exit(main())' "$@"
}

wants() { [[ " ${RECIPES[*]} " == *" $1 "* ]]; }

joined() { local IFS=-; echo "$*"; }  # the arguments joined by -

fail() {
    # Reports a failure; folds then exits with 1.
    echo "gpu_folds: $*" >&2
    FAILED+=("$*")
}

start() {
    # Runs "${@:2}" in the background, logged to $WORK/logs/$1.log, as job $1.
    "${@:2}" >"$WORK/logs/$1.log" 2>&1 &
    JOBS+=("$!")
    JOB_NAMES+=("$1")
}

wait_jobs() {
    # Waits for every started job by its PID and reports each that failed.
    local i
    for i in "${!JOBS[@]}"; do
        wait "${JOBS[i]}" || fail "${JOB_NAMES[i]} failed (logs/${JOB_NAMES[i]}.log)"
    done
    JOBS=()
    JOB_NAMES=()
}

prepare_data() {
    # The wheels without onnxruntime-gpu, and every input of SPLITS' runs packed into
    # $WHEELS/train-data.tgz; refuses to start while one is missing.
    local split file paths=(runs/dl19-minilm.run) missing=()
    local needed=(
        runs/dl19-minilm.run "${LLMRANK_DL19_DIR:-../shared/data/trec-dl19}/candidates.jsonl"
    )
    for split in "${SPLITS[@]}"; do
        needed+=("examples/results/split-$split.json")
        for file in candidates.jsonl qrels.txt teacher.run split.json; do
            needed+=("runs/ict20-$split/$file")
        done
        paths+=("runs/ict20-$split")
    done
    for file in "${needed[@]}"; do [[ -f "$file" ]] || missing+=("$file"); done
    if ((${#missing[@]})); then
        printf 'gpu_folds: missing %s\n' "${missing[@]}" >&2
        echo "gpu_folds: make the runs with examples/teacher_run.py and" \
            "examples/inverse_cloze.py --per-query 20 (see this script's header)" >&2
        return 1
    fi
    ORT_GPU_VERSION=none prepare || return 1
    if ! tar -czf "$WHEELS/train-data.tgz" "${paths[@]}"; then
        rm -f "$WHEELS/train-data.tgz"
        echo "gpu_folds: could not pack ${paths[*]}" >&2
        return 1
    fi
    ls -l "$WHEELS/train-data.tgz"
}

train_vote() {
    # The vote recipe on split $1, from train_split's common and listwise arguments.
    llmrank train "${common[@]}" --objective pointwise --passage-vote ' yes' \
        ${POINTWISE_UPDATES:+--stop-after "$POINTWISE_UPDATES"} \
        --max-minutes "${minutes[0]}" --grad-accumulation 4 --min-window 8 --max-window 8 \
        --contiguous 0 --learning-rate 5e-4 --warmup-steps 0 --max-grad-norm 1e6 \
        --validation-depth 100 --output "$WORK/$1/pointwise" \
        && llmrank train "${common[@]}" "${listwise[@]}" --rank-by-vote \
            --pointwise-weight 1 --init-adapter "$WORK/$1/pointwise/checkpoint/model" \
            ${VOTE_UPDATES:+--stop-after "$VOTE_UPDATES"} \
            --max-minutes "${minutes[1]}" --learning-rate 2e-4 --warmup-steps 10 \
            --output "$WORK/$1/vote"
}

train_split() {
    # Starts the recipes on split $1 into $WORK/$1, side by side.
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
        # the template repeats the query on every passage's line
        --max-prompt-tokens "${MAX_PROMPT_TOKENS:-4096}"
    )
    wants vote && start "$split-vote" train_vote "$split"
    wants first && start "$split-first" llmrank train "${common[@]}" "${listwise[@]}" \
        ${FIRST_UPDATES:+--stop-after "$FIRST_UPDATES"} \
        --max-minutes "$(awk "BEGIN { print ${minutes[0]} + ${minutes[1]} }")" \
        --learning-rate 3e-4 --warmup-steps 20 --output "$WORK/$split/first"
}

held_out() {
    # Whether split $1 holds queries out (split-all.json holds none).
    "$PYTHON" -c 'import json, sys; sys.exit(not json.load(open(sys.argv[1]))["validation"])' \
        "examples/results/split-$1.json"
}

held_out_count() {
    # The number of queries split $1 holds out.
    "$PYTHON" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["validation"]))' \
        "examples/results/split-$1.json"
}

same_validation() {
    # Whether the packed training split of $1 holds out the queries that are scored, those of
    # examples/results/split-$1.json; says which differ where not.
    "$PYTHON" - "$DATA/runs/ict20-$1/split.json" "examples/results/split-$1.json" <<'PY'
import json
import sys

trained, scored = (set(json.load(open(path))["validation"]) for path in sys.argv[1:])
if trained != scored:
    print(
        f"{sys.argv[1]} holds out {len(trained)} queries, {sys.argv[2]} {len(scored)}: "
        f"{sorted(trained - scored)} only in the first, {sorted(scored - trained)} only in "
        "the second",
        file=sys.stderr,
    )
sys.exit(trained != scored)
PY
}

evaluations() {
    # The configurations scored for RECIPES: <recipe>-<readout>.
    wants vote && echo vote-votes
    wants first && echo first-sliding first-votes first-votes-order-invariant
}

evaluate_split() {
    # Starts the scoring of split $1's models on its held-out queries, side by side.
    local split="$1" name model reading
    held_out "$split" || return 0
    same_validation "$split" \
        || { fail "$split: trained and scored held-out queries differ, not evaluated"; return 0; }
    local common=(
        --split "examples/results/split-$split.json" --candidates "$DATA/dl19/candidates.jsonl"
        --qrels "$DATA/dl19/qrels.txt" --teacher "$DATA/runs/dl19-minilm.run"
        --device "${DEVICE:-cuda}" --threads 2 --orders "${ORDERS[@]}"
        --depth "${EVAL_DEPTH:-100}" --fusion-k 60
        --max-passage-words "${EVAL_PASSAGE_WORDS:-auto}"
    )
    for name in $(evaluations); do
        model="$WORK/$split/${name%%-*}/checkpoint/model"
        [[ -d "$model" ]] || continue  # not trained: summarise reports the missing record
        case "$name" in
            *-sliding) reading=(--strategy sliding) ;;
            *-votes) reading=(--vote ' yes' --strategy disjoint) ;;
            *-votes-order-invariant)
                reading=(--vote ' yes' --strategy disjoint --order-invariant) ;;
        esac
        start "$split-eval-$name" "$PYTHON" examples/heldout_eval.py "${common[@]}" \
            --model "$model" "${reading[@]}" --json "$WORK/records/$split-$name.json"
    done
}

complete_record() {
    # Whether the heldout_eval.py record $1 holds the per-query figures of every input order.
    "$PYTHON" - "$1" "${ORDERS[@]}" <<'PY' 2>/dev/null
import json
import sys

figures = json.load(open(sys.argv[1]))["per_query"]
sys.exit(not all(f"reranked_{order}" in figures for order in sys.argv[2:]))
PY
}

summarise() {
    # Checks every expected record of the evaluated splits, and pools each configuration
    # whose records are all complete, over two splits or more.
    local name split record queries=0 scored=() records
    for split in "${SPLITS[@]}"; do held_out "$split" && scored+=("$split"); done
    for split in "${scored[@]}"; do queries=$((queries + $(held_out_count "$split"))); done
    for name in $(evaluations); do
        records=()
        for split in "${scored[@]}"; do
            record="$WORK/records/$split-$name.json"
            if complete_record "$record"; then
                records+=("$record")
            else
                fail "$split $name: no complete record (${ORDERS[*]}) in $record"
            fi
        done
        ((${#scored[@]} > 1)) || continue
        if ((${#records[@]} < ${#scored[@]})); then
            echo "gpu_folds: no out-of-fold summary for $name: a split's record is missing" >&2
            continue
        fi
        "$PYTHON" examples/fold_summary.py "${records[@]}" --expect-queries "$queries" \
            --json "$WORK/records/out-of-fold-$name-$(joined "${scored[@]}").json" \
            >/dev/null || fail "fold_summary.py failed on the $name records"
    done
}

pack() {
    # Records, training records and logs into $1/results.tgz, and the trained models as tar
    # parts beside it.
    local out="$1" split name
    for split in "${SPLITS[@]}"; do
        for name in pointwise vote first; do
            [[ -f "$WORK/$split/$name/training.json" ]] \
                && cp "$WORK/$split/$name/training.json" "$WORK/records/training-$split-$name.json"
        done
    done
    tar -czf "$out/results.tgz" -C "$WORK" records logs || fail "could not write $out/results.tgz"
    for split in "${SPLITS[@]}"; do
        for name in vote first; do
            [[ -d "$WORK/$split/$name/checkpoint/model" ]] || continue
            tar -cf - -C "$WORK/$split/$name/checkpoint" model \
                | split -b 15m -d -a 1 - "$out/adapter-$split-$name.tar.part-" \
                || fail "could not pack the $split $name model"
        done
    done
}

folds() {
    local split started out
    out="${OUT:-runs/gpu-folds}/$(date -u +%Y%m%dT%H%M%SZ)-$(joined "${SPLITS[@]}")"
    out+="-$(joined "${RECIPES[@]}")"
    for split in "${SPLITS[@]}"; do
        [[ -f "examples/results/split-$split.json" ]] \
            || { echo "gpu_folds: no examples/results/split-$split.json" >&2; return 1; }
    done
    mkdir -p "$(dirname "$out")" && mkdir "$out" \
        || { echo "gpu_folds: cannot make a new folder $out" >&2; return 1; }
    # a fresh $WORK: llmrank train refuses an earlier run's folder, and an earlier run's
    # models and records would be scored and pooled as this run's
    rm -rf "$WORK" "$DATA"
    mkdir -p "$WORK/logs" "$WORK/records" "$DATA"
    if [[ "${DEVICE:-cuda}" == cuda ]]; then install_wheels || return $?; fi
    tar -xzf "$WHEELS/train-data.tgz" -C "$DATA" \
        || { echo "gpu_folds: cannot unpack $WHEELS/train-data.tgz" >&2; return 1; }
    for split in "${SPLITS[@]}"; do
        [[ -f "$DATA/runs/ict20-$split/split.json" ]] || {
            echo "gpu_folds: $WHEELS/train-data.tgz has no runs/ict20-$split: run" \
                "SPLITS=\"${SPLITS[*]}\" bash $0 prepare" >&2
            return 1
        }
    done
    cp -r "${LLMRANK_DL19_DIR:-$WHEELS/trec-dl19}" "$DATA/dl19" \
        || { echo "gpu_folds: no DL19 data to copy" >&2; return 1; }
    export HF_HUB_OFFLINE=1 LLMRANK_CACHE_DIR=/tmp/llmrank-cache PYTHONUNBUFFERED=1
    # dequantise the GGUF file once, before the runs share its cache
    local base=smollm2-135m-instruct
    "$PYTHON" -c "from haystack_llmrank import Reranker; Reranker.from_pretrained('$base')" \
        || return 1
    started=$(date +%s)
    for split in "${SPLITS[@]}"; do train_split "$split"; done
    wait_jobs
    echo "training: $(($(date +%s) - started)) s"
    started=$(date +%s)
    for split in "${SPLITS[@]}"; do evaluate_split "$split"; done
    wait_jobs
    echo "evaluation: $(($(date +%s) - started)) s"
    summarise
    pack "$out"
    ls -l "$out"
    if ((${#FAILED[@]})); then
        printf 'gpu_folds: failed: %s\n' "${FAILED[@]}" >&2
        return 1
    fi
}

[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0  # sourced for its functions
case "${1:-folds}" in
    prepare) prepare_data ;;
    folds) folds ;;
    *) echo "usage: bash $0 [prepare|folds]" >&2; exit 2 ;;
esac
