#!/usr/bin/env bash
# The installed package, not the clone: build picoseg's wheel, install it into a fresh virtual
# environment (no editable install, no access to conf/ of the clone), and from an empty folder
# outside the clone run the console commands: a smoke training, an evaluation of its checkpoint,
# a paper recipe's composed config, and a user config folder added with hydra.searchpath.
# Needs the clone's environment (SHARED_VENV, default .venv as `make` builds it) for the torch
# stack it shares.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=offline

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --upgrade pip
# The torch stack (torch, torchvision, triton and the CUDA libraries: about 5.5 GB) is shared with
# the clone's environment instead of installed twice: links to those packages only, in a folder
# that a .pth file puts on the fresh environment's path. pip sees them as installed; every other
# dependency of the wheel, picoseg's own code and configs come from the fresh install below.
shared_site=$("${SHARED_VENV:-$repo/.venv}/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$work/torch-stack"
for entry in "$shared_site"/{torch,torchgen,functorch,torchvision,torchvision.libs,triton,nvidia} \
  "$shared_site"/{torch,torchvision,triton}-[0-9]*.dist-info "$shared_site"/nvidia_*.dist-info; do
  if [ -e "$entry" ]; then ln -s "$entry" "$work/torch-stack/"; fi
done
fresh_site=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$work/torch-stack" > "$fresh_site/torch_stack.pth"
"$work/venv/bin/pip" wheel --quiet --no-deps --wheel-dir "$work/dist" "$repo"
"$work/venv/bin/pip" install --quiet --no-cache-dir "$work"/dist/picoseg-*.whl
"$work/venv/bin/pip" check
bin="$work/venv/bin"
cd "$work"
mkdir -p outside && cd outside
# The package must come from site-packages, not from the clone.
"$bin/python" -c "import picoseg, sys; p = picoseg.__file__; print(p); sys.exit('$repo' in p)"

"$bin/picoseg-train" debug=fast hydra.run.dir=run > train.log 2>&1 || { tail -40 train.log; exit 1; }
"$bin/picoseg-evaluate" ckpt_path=run/checkpoints/best.ckpt hydra.run.dir=eval > eval.log 2>&1 \
  || { tail -40 eval.log; exit 1; }
"$bin/python" - <<'PY'
import json
train = json.load(open("run/metrics.json"))["miou"]
evaluated = json.load(open("eval/metrics.json"))["miou"]
assert abs(train - evaluated) < 1e-6, (train, evaluated)
print(f"wheel: picoseg-train and picoseg-evaluate agree, val mIoU {evaluated:.4f}")
PY
"$bin/python" -m picoseg.train --cfg job dataset=cityscapes backbone=hrnet48 > job.yaml
grep -q "name: hrnet_w48" job.yaml && grep -q "name: cityscapes" job.yaml
mkdir -p myconf/dataset
printf 'defaults:\n  - scenes\nname: mine\nroot: ${paths.data_dir}/mine\n' > myconf/dataset/mine.yaml
"$bin/picoseg-train" --cfg job 'hydra.searchpath=[file://myconf]' dataset=mine > mine.yaml
grep -q "name: mine" mine.yaml
echo "wheel: configs found in the installed package; a user config folder adds dataset=mine"
