#!/usr/bin/env bash
# Reproduces the bundled default models, oftsr/weights/{teacher,student}.safetensors,
# and their evaluation tables. Runs on a CPU (the published files came from a 2-core one).
#
#   DATA=/path/to/data bash scripts/train_default_models.sh [work_dir]
#
# Needs the package installed with its training extra (pip install -e ".[train]").
# DATA must hold train/ (HR photographs) and val/Set5, val/Set14. Training only ever
# reads train/. Every stage resumes where it stopped when the script is run again.
set -euo pipefail
: "${DATA:?set DATA to a folder with train/ and val/Set5, val/Set14}"
WORK=${1:-runs/default-models}
REPO=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"

# Stage 1: teacher flow. The compact preset (3.7 M parameters) trains at about 1.4 steps/s
# on 2 cores. No dropout: a run this short underfits, it does not overfit.
python "$REPO/trainer/train_teacher.py" --train_data_dir "$DATA/train" --validation_data_dir "$DATA/val/Set5" \
  --output_dir "$WORK/teacher" --preset compact --scale 4 --degradation bicubic --sigma_p 0.2 \
  --resolution 64 --train_batch_size 8 --max_train_steps 5000 --learning_rate 3e-4 --lr_warmup_steps 200 \
  --ema_decay 0.999 --dropout 0 --checkpointing_steps 500 --checkpoints_total_limit 2 \
  --validation_steps 2500 --validation_nfe_steps 4 --report_to none --dataloader_num_workers 1 \
  --seed 0 --resume_from_checkpoint latest

# Stage 2: one-step student (distill + 0.01 align + 0.1 boundary, midpoint teacher step),
# about 2.6 s per step on 2 cores.
python "$REPO/trainer/distill.py" --teacher "$WORK/teacher/teacher.safetensors" \
  --train_data_dir "$DATA/train" --validation_data_dir "$DATA/val/Set5" --output_dir "$WORK/student" \
  --resolution 64 --train_batch_size 8 --max_train_steps 3000 --learning_rate 1e-4 --lr_warmup_steps 50 \
  --ema_decay 0.995 --checkpointing_steps 100 --checkpoints_total_limit 2 --validation_steps 250 \
  --report_to none --dataloader_num_workers 1 --seed 0 --resume_from_checkpoint latest

cp "$WORK/teacher/teacher.safetensors" "$WORK/student/student.safetensors" "$REPO/oftsr/weights/"

# Evaluation of the bundled files: bicubic, the teacher (16 midpoint steps: NFE 31, the
# paper's DIV2K count), the student at t = 0, 0.25, 0.5, 0.75, 1.
for set in Set5 Set14; do
  python -m oftsr eval --data "$DATA/val/$set" --steps 16 --out "$WORK/eval-$set"
done
