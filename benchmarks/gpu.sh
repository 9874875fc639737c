#!/usr/bin/env bash
# One command for a machine with a CUDA GPU: the head's timing (N = 1024 and 4096, K = 21 and 150)
# and every segmenter preset end to end at batch 1 and its best batch size, written to
# benchmarks/results/head_speed_cuda.{json,md} and speed_cuda.{json,md}. Budget: < 8 minutes.
#
#   benchmarks/gpu.sh                          # on a CUDA machine (models in fp16, the head in fp32)
#   benchmarks/gpu.sh --device cpu --quick     # the same steps, small, on the CPU (what CI runs)
#   benchmarks/gpu.sh --out-dir DIR            # write the tables elsewhere
#
# --quick: head at N = 1024, K = 21 only; the offline preset (focus-s14, real weights) at batch 1
# and 2, one timed run, one prompt template.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
quick=0
out_dir=benchmarks/results
dtype=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --out-dir) out_dir="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python}
case "$device" in
  cuda*)
    if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
      echo "gpu.sh: --device $device but torch sees no CUDA GPU (torch.cuda.is_available() is False);" \
           "run on a CUDA machine or pass --device cpu --quick" >&2
      exit 2
    fi
    tag=cuda ;;
  cpu) tag=cpu ;;
  *) echo "gpu.sh: --device must be cuda, cuda:N or cpu, got $device" >&2; exit 2 ;;
esac
[ "$quick" = 1 ] && tag="${tag}_quick"
mkdir -p "$out_dir"
start=$(date +%s)

if [ "$quick" = 1 ]; then
  head_args=(--sides 32 --classes 21 --repeat 2)
  speed_args=(--presets offline --batch-sizes 1 2 --repeat 1 --one-template)
else
  head_args=(--sides 32 64 --classes 21 150)
  speed_args=(--batch-sizes 1 2 4 8 16 --repeat 3)
fi

echo "gpu.sh: head timing on $device" >&2
"$python" -m benchmarks.head_speed --device "$device" "${head_args[@]}" --json "$out_dir/head_speed_${tag}.json"
echo "gpu.sh: presets end to end on $device" >&2
"$python" -m benchmarks.speed --device "$device" --dtype "$dtype" "${speed_args[@]}" \
  --out "$out_dir/speed_${tag}.json"
echo "gpu.sh: wrote $out_dir/head_speed_${tag}.md and $out_dir/speed_${tag}.md in $(( $(date +%s) - start )) s" >&2
