#!/usr/bin/env bash
# Reproduces the x4 pair that shipped until version 0.9 and that today's x4 was fine-tuned
# from (scripts/train_x4_models.sh x4), written over oftsr/weights/x4-{teacher,student}.safetensors
# (compact preset, stored in float16), and its evaluation tables. The teacher came from a 2-core
# CPU, the student from one H100 GPU (each stage runs on either). The GPU recipe for the
# shipped x4 and x4-real is scripts/train_x4_models.sh.
#
#   DATA=/path/to/data [PYTHON=python3] [WEIGHTS_DIR=folder] bash scripts/train_default_models.sh [work_dir]
#
# WEIGHTS_DIR (default oftsr/weights, replacing the shipped x4 pair) is where the two
# float16 files are written and evaluated from.
# Needs the package installed with its training extra (pip install -e ".[train]").
# DATA must hold train/ (HR photographs) and val/Set5, val/Set14. Training only ever
# reads train/. Every stage resumes where it stopped when the script is run again.
set -euo pipefail
: "${DATA:?set DATA to a folder with train/ and val/Set5, val/Set14}"
WORK=${1:-runs/default-models}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python}  # the interpreter with torch, e.g. python3 where there is no `python`
WEIGHTS_DIR=${WEIGHTS_DIR:-$REPO/oftsr/weights}
mkdir -p "$WORK" "$WEIGHTS_DIR"

# Stage 1: teacher flow. The compact preset (3.7 M parameters) trains at about 1.4 steps/s
# on 2 cores. No dropout: a run this short underfits, it does not overfit.
"$PYTHON" "$REPO/trainer/train_teacher.py" --train_data_dir "$DATA/train" --validation_data_dir "$DATA/val/Set5" \
  --output_dir "$WORK/teacher" --preset compact --scale 4 --degradation bicubic --sigma_p 0.2 \
  --resolution 64 --train_batch_size 8 --max_train_steps 5000 --learning_rate 3e-4 --lr_warmup_steps 200 \
  --ema_decay 0.999 --dropout 0 --checkpointing_steps 500 --checkpoints_total_limit 2 \
  --validation_steps 2500 --validation_nfe_steps 4 --report_to none --dataloader_num_workers 1 \
  --seed 0 --resume_from_checkpoint latest

# Stage 2: one-step student (distill + 0.01 align + 0.1 boundary, midpoint teacher step).
# The published student ran on one H100: 3.5 steps/s, 12 minutes. Batch 64 of 128 px crops
# keeps the realism of the t = 1 end steady from checkpoint to checkpoint, which batch 8 of
# 64 px crops on a CPU did not (README, "Bundled models"). No validation here: the
# evaluation below replaces it.
# On a 2-core CPU the same command takes some 50 hours; set WORKERS to your core count.
"$PYTHON" "$REPO/trainer/distill.py" --teacher "$WORK/teacher/teacher.safetensors" \
  --train_data_dir "$DATA/train" --output_dir "$WORK/student" \
  --resolution 128 --train_batch_size 64 --repeats 16 --max_train_steps 2500 --learning_rate 2e-4 \
  --lr_warmup_steps 200 --ema_decay 0.999 --mixed_precision no --checkpointing_steps 250 \
  --checkpoints_total_limit 2 --report_to none --dataloader_num_workers "${WORKERS:-14}" --seed 0 \
  --resume_from_checkpoint latest

# The shipped files: the EMA weights in float16 (read back as float32; outputs 88-90 dB
# PSNR from the float32 files' on Set5), as train_x4_models.sh ships its pairs.
for role in teacher student; do
  "$PYTHON" -m oftsr convert "$WORK/$role/$role.safetensors" "$WEIGHTS_DIR/x4-$role.safetensors" --dtype fp16 --overwrite
done

# Evaluation of those files: bicubic, the teacher (16 midpoint steps: NFE 31, the paper's
# DIV2K count), the student at t = 0, 0.25, 0.5, 0.75, 1.
for set in Set5 Set14; do
  "$PYTHON" -m oftsr eval --model "$WEIGHTS_DIR/x4-student.safetensors" "$WEIGHTS_DIR/x4-teacher.safetensors" \
    --data "$DATA/val/$set" --steps 16 --out "$WORK/eval-$set"
done
