#!/usr/bin/env bash
# Trains a bundled x4 pair on one GPU, converts it to the shipped half-precision files
# oftsr/weights/<name>-{teacher,student}.safetensors and evaluates it:
#
#   DATA=/path/to/data bash scripts/train_x4_models.sh x4       [work_dir]   # bicubic: clean and AI-generated images
#   DATA=/path/to/data bash scripts/train_x4_models.sh x4-real  [work_dir]   # Real-ESRGAN degradation: camera photos
#
# Device: one NVIDIA H100 80GB (any CUDA GPU with bf16 works; smaller ones need a smaller
# BATCH). Measured on an H100 in bf16 with 14 loader workers, compact preset: the teacher
# 7.25 steps/s (batch 32 of 256 px), the distillation 4.0 steps/s (batch 64 of 128 px).
# The small preset costs about 4x the compact one per pixel: expect about 1.8 and 1 steps/s,
# so 50,000 teacher steps take about 8 hours and 5,000 student steps 1.5 hours per pair.
#
# The shipped x4-real pair is version 0.9's x4 pair fine-tuned in two fixed-time runs on one
# H100 (about 15 minutes in all; the README's Bundled models has its scores), with
# DATA/train holding the 241 photographs (as JPEG quality 92, 4:4:4 copies); run 1 with
# version 0.8.0 of this script and package (its camera chain), run 2 with version 0.9.0
# (whose camera chain, as 0.10's, reduced by area, bilinear or bicubic), from the files
# run 1 wrote into oftsr/weights:
#   PRESET=compact TEACHER_MINUTES=5 STUDENT_MINUTES=2.5 TEACHER_DROPOUT=0 TEACHER_WARMUP=100 \
#   TEACHER_EMA=0.999 INIT_TEACHER=x4 INIT_STUDENT=x4 REALESRGAN_CONFIG=camera EVAL=0 \
#   DATA=... bash scripts/train_x4_models.sh x4-real runs/x4-real
#   PRESET=compact TEACHER_MINUTES=4.5 STUDENT_MINUTES=2 TEACHER_DROPOUT=0 TEACHER_WARMUP=100 \
#   TEACHER_EMA=0.999 INIT_TEACHER=x4-real INIT_STUDENT=x4-real REALESRGAN_CONFIG=camera EVAL=0 \
#   DATA=... bash scripts/train_x4_models.sh x4-real runs/x4-real-2
#
# Every stage resumes where it stopped when the script is run again (checkpoints every 1,000 steps, --resume_from_checkpoint latest), so
# it can run as a sequence of shorter runs: MAX_MINUTES=N stops the running stage after N
# minutes with a checkpoint (--max_train_minutes), and the script exits with status 75.
# A fixed time instead of fixed steps: TEACHER_MINUTES=N and STUDENT_MINUTES=M end each
# stage after that many minutes (set-up included) with a checkpoint, and the script goes
# on with the stage's newest EMA weights (the exported file records the step reached);
# a SIGTERM or Ctrl-C still stops the script with status 75.
#
# Needs the package installed with its training extra (pip install -e ".[train]"), and for
# the baseline rows the evaluation extra (README, Evaluation). DATA must hold train/ (HR
# photographs), val/Set5, val/Set14 and val/RealSR-Canon/{HR,LR}; training reads only train/.
#
# Every size can be overridden from the environment (PRESET, RESOLUTION, BATCH,
# TEACHER_STEPS, STUDENT_STEPS, STUDENT_RESOLUTION, CHECKPOINT_STEPS, MIXED_PRECISION,
# WORKERS, REPEATS, WEIGHTS_DIR, EVAL, NO_BASELINES, TEACHER_LR, TEACHER_WARMUP,
# TEACHER_EMA, TEACHER_DROPOUT, STUDENT_LR, REALESRGAN_CONFIG, MAX_MINUTES,
# TEACHER_MINUTES, STUDENT_MINUTES, PYTHON); with tiny values (and MIXED_PRECISION=no on a CPU
# without native bf16) the same commands run on a CPU in a minute, as a check of the recipe (docs/models.md; a test runs it). INIT_TEACHER and INIT_STUDENT start the two stages from
# existing weights instead of from scratch and from the teacher: a fine-tune, e.g. of the x4
# pair into x4-real. TEACHER (a bundled name or a file) skips stage 1 and distils from that
# teacher: TEACHER=x4 INIT_STUDENT=x4 STUDENT_MINUTES=6 distils the shipped student further
# (docs/models.md: how the shipped one was made, and how to give a finished stage more minutes).
#
# A fine-tune of the x4 pair on a CPU does not make a usable x4-real, with either chain
# (docs/models.md: measured on RealSR-Canon, no better than bicubic at t = 0);
# train it on a GPU as above, REALESRGAN_CONFIG=camera first.
set -euo pipefail
NAME=${1:?usage: DATA=... bash scripts/train_x4_models.sh x4|x4-real [work_dir]}
case "$NAME" in
  x4) DEGRADATION=bicubic ;;
  x4-real) DEGRADATION=realesrgan ;;
  *) echo "error: the model name must be x4 or x4-real, got '$NAME'" >&2; exit 2 ;;
esac
: "${DATA:?set DATA to a folder with train/ and val/Set5, val/Set14, val/RealSR-Canon}"
WORK=${2:-runs/$NAME}
REPO=$(cd "$(dirname "$0")/.." && pwd)
WEIGHTS_DIR=${WEIGHTS_DIR:-$REPO/oftsr/weights}
PYTHON=${PYTHON:-python}  # the interpreter with torch, e.g. python3 where there is no `python`
# The small preset (14.8 M parameters) is 29.6 MB in half precision: inside the 40 MB a
# shipped file may take, with 4x the compact preset's capacity. A fine-tune (INIT_TEACHER)
# keeps the size of the weights it starts from unless PRESET is set.
PRESET_ARGS=(--preset "${PRESET:-small}")
[ -n "${INIT_TEACHER:-}" ] && [ -z "${PRESET:-}" ] && PRESET_ARGS=()
RESOLUTION=${RESOLUTION:-256}
BATCH=${BATCH:-32}
TEACHER_STEPS=${TEACHER_STEPS:-50000}
STUDENT_STEPS=${STUDENT_STEPS:-5000}
STUDENT_RESOLUTION=${STUDENT_RESOLUTION:-128}
CHECKPOINT_STEPS=${CHECKPOINT_STEPS:-1000}
MIXED_PRECISION=${MIXED_PRECISION:-bf16}
WORKERS=${WORKERS:-14}
TEACHER_LR=${TEACHER_LR:-2e-4}
TEACHER_WARMUP=${TEACHER_WARMUP:-1000}
TEACHER_EMA=${TEACHER_EMA:-0.9999}
# The paper's 0.1: 50,000 steps of batch 32 pass over the 241 photographs about 6,600
# times. A short fine-tune underfits rather than overfits: TEACHER_DROPOUT=0 there.
TEACHER_DROPOUT=${TEACHER_DROPOUT:-0.1}
STUDENT_LR=${STUDENT_LR:-2e-4}
# x4-real only: the ranges of its degradation, full (Real-ESRGAN's published chain) or
# camera (one stage, mild noise and JPEG); both stages must use the same.
# A TEACHER given records its own: then only a REALESRGAN_CONFIG set here is passed on (and checked).
STUDENT_CONFIG_ARGS=(--realesrgan_config "${REALESRGAN_CONFIG:-full}")
[ -n "${TEACHER:-}" ] && [ -z "${REALESRGAN_CONFIG:-}" ] && STUDENT_CONFIG_ARGS=()
REALESRGAN_CONFIG=${REALESRGAN_CONFIG:-full}
INIT_TEACHER_ARGS=()
[ -n "${INIT_TEACHER:-}" ] && INIT_TEACHER_ARGS=(--init_from "$INIT_TEACHER")
INIT_STUDENT_ARGS=()
[ -n "${INIT_STUDENT:-}" ] && INIT_STUDENT_ARGS=(--init_student "$INIT_STUDENT")
if [ -n "${TEACHER:-}" ] && [ -n "${INIT_TEACHER:-}${TEACHER_MINUTES:-}" ]; then
  echo "error: TEACHER (distil from an existing teacher) skips the teacher's training: INIT_TEACHER and" \
    "TEACHER_MINUTES do not apply with it" >&2
  exit 2
fi
if [ -n "${MAX_MINUTES:-}" ] && [ -n "${TEACHER_MINUTES:-}${STUDENT_MINUTES:-}" ]; then
  echo "error: MAX_MINUTES (stop and resume later) and TEACHER_MINUTES/STUDENT_MINUTES (a stage's fixed time) exclude each other" >&2
  exit 2
fi
STOPPED=0  # a SIGTERM or Ctrl-C reached the script (send it to the process group, as job schedulers do)
trap 'STOPPED=1' TERM INT

# Runs one stage's training command. A stage with a time of its own ($1 minutes) that ends
# on it is exported from its newest checkpoint ($2 run folder, $3 file) and counts as done;
# any other stop ends the script with the stage's status. The time a timed stage has used
# is kept in $2/seconds_used, so a stage stopped and run again gets only what is left of it
# (a run killed outright, with no chance to write it, is not counted).
run_stage() {
  local minutes=$1 run_dir=$2 file=$3 status=0
  shift 3
  if [ "$STOPPED" = 1 ]; then exit 75; fi  # a signal between stages (or during an export) stops before the next
  local limit=${minutes:-${MAX_MINUTES:-}} ledger="$run_dir/seconds_used" used=0 started=$SECONDS
  if [ -n "$minutes" ] && [ -f "$file" ]; then  # its time is spent: a second run would add as much again
    echo "$file exists: the stage had its $minutes minutes (give it more minutes and delete the file, or delete" \
      "the file and $ledger, to train it further)"
    return
  fi
  if [ -n "$minutes" ]; then
    if [ -f "$ledger" ]; then used=$(cat "$ledger"); fi
    if ! [[ "$used" =~ ^[0-9]+$ ]]; then
      echo "error: $ledger should hold the whole seconds the stage has used, not '$used': fix or delete it" >&2
      exit 2
    fi
    limit=$(awk -v m="$minutes" -v u="$used" 'BEGIN { l = m - u / 60; printf "%.3f", (l > 0 ? l : 0) }')
    if [ "$used" != 0 ]; then
      echo "the stage has used $(awk -v u="$used" 'BEGIN { printf "%.1f", u / 60 }') of its $minutes minutes: $limit left"
    fi
  fi
  if [ -n "$minutes" ] && [ "$limit" = 0.000 ]; then
    status=75  # its time was spent before an export: export now
  else
    "$@" ${limit:+--max_train_minutes "$limit"} || status=$?
    if [ -n "$minutes" ]; then  # written whole, then renamed: a kill never leaves an empty ledger
      mkdir -p "$run_dir" && echo $((used + SECONDS - started)) > "$ledger.tmp" && mv "$ledger.tmp" "$ledger"
    fi
  fi
  if [ "$STOPPED" = 1 ]; then
    exit 75
  elif [ "$status" = 75 ] && [ -n "$minutes" ]; then
    local exported=0
    echo "the stage's $minutes minutes are up: its newest checkpoint is its result, exported to $file (no resume" \
      "is needed, whatever the trainer's message above says)"
    "$PYTHON" "$REPO/trainer/export.py" "$run_dir" "$file" --overwrite || exported=$?  # the stage's newest weights
    if [ "$STOPPED" = 1 ]; then exit 75; fi
    if [ "$exported" != 0 ]; then exit "$exported"; fi
  elif [ "$status" != 0 ]; then
    exit "$status"
  fi
}

# 241 photographs at batch 32 would make 8-step epochs, each restarting the loader workers.
REPEATS=${REPEATS:-16}
mkdir -p "$WORK" "$WEIGHTS_DIR"

# Stage 1: the teacher flow (L1 velocity loss, t ~ U[0.001, 1], EMA 0.9999). Validation
# on Set5 every 5,000 steps with 4 midpoint steps (NFE 7), a cheap check that the run is
# learning. Skipped for a TEACHER given, which is looked up now: a wrong name stops here.
if [ -n "${TEACHER:-}" ]; then
  # stdout is the path alone; the reason a lookup fails goes to stderr
  TEACHER_FILE=$("$PYTHON" -c '
import sys, oftsr
try:
    print(oftsr.existing_model_path(sys.argv[1], "teacher", "TEACHER").absolute())
except (OSError, ValueError) as e:
    sys.exit(f"error: {e}")' "$TEACHER") || exit 2
  echo "distilling from $TEACHER_FILE (TEACHER): no teacher training"
else
  TEACHER_FILE=$WORK/teacher/teacher.safetensors
  run_stage "${TEACHER_MINUTES:-}" "$WORK/teacher" "$TEACHER_FILE" \
    "$PYTHON" "$REPO/trainer/train_teacher.py" --train_data_dir "$DATA/train" --validation_data_dir "$DATA/val/Set5" \
    --output_dir "$WORK/teacher" "${PRESET_ARGS[@]}" --scale 4 --degradation "$DEGRADATION" --sigma_p 0.2 \
    --realesrgan_config "$REALESRGAN_CONFIG" \
    --resolution "$RESOLUTION" --train_batch_size "$BATCH" --repeats "$REPEATS" --max_train_steps "$TEACHER_STEPS" \
    --learning_rate "$TEACHER_LR" --lr_warmup_steps "$TEACHER_WARMUP" --ema_decay "$TEACHER_EMA" --dropout "$TEACHER_DROPOUT" \
    --mixed_precision "$MIXED_PRECISION" "${INIT_TEACHER_ARGS[@]}" \
    --checkpointing_steps "$CHECKPOINT_STEPS" --checkpoints_total_limit 2 --validation_steps 5000 \
    --validation_nfe_steps 4 --report_to none --dataloader_num_workers "$WORKERS" --seed 0 \
    --resume_from_checkpoint latest
fi

# A student distilled from an earlier state of the teacher (a teacher trained further, its file
# remade) would ship beside a teacher it does not match, or stop at the resume's check: say so.
if [ -d "$WORK/student" ]; then
  "$PYTHON" - "$WORK/student" "$TEACHER_FILE" <<'EOF' || exit 2
import json, sys
from pathlib import Path
import oftsr
from oftsr.checkpoint import network_digest
run, teacher = Path(sys.argv[1]), sys.argv[2]
recorded = [json.loads(p.read_text()).get("metadata", {}).get("teacher_digest") for p in run.glob("checkpoint-*/oftsr.json")]
if (run / "student.safetensors").is_file():
    recorded.append(oftsr.read_metadata(run / "student.safetensors").get("teacher_digest"))
digest = network_digest(oftsr.load_model(teacher))
if any(d is not None and d != digest for d in recorded):
    sys.exit(f"error: {run} holds a student distilled from another state of the teacher than {teacher} (the teacher "
             f"was trained further since?): delete {run} to distil a student from this teacher")
EOF
fi

# Stage 2: the one-step student (distill + 0.01 align + 0.1 boundary, midpoint teacher
# step), started from the teacher's EMA weights. --degradation and --realesrgan_config
# repeat the teacher's (distill.py checks them against its file): they make the training
# LR, and the degradation is written into the student. Batch 64 of 128 px crops and
# EMA 0.999 kept the compact student's t = 1 end steady (README, Bundled models).
run_stage "${STUDENT_MINUTES:-}" "$WORK/student" "$WORK/student/student.safetensors" \
  "$PYTHON" "$REPO/trainer/distill.py" --teacher "$TEACHER_FILE" \
  --train_data_dir "$DATA/train" --output_dir "$WORK/student" --degradation "$DEGRADATION" \
  "${STUDENT_CONFIG_ARGS[@]}" \
  --dt 0.05 --teacher_solver midpoint --lambda_align 0.01 --lambda_bc 0.1 \
  --resolution "$STUDENT_RESOLUTION" --train_batch_size $((BATCH * 2)) --repeats "$REPEATS" \
  --max_train_steps "$STUDENT_STEPS" --learning_rate "$STUDENT_LR" --lr_warmup_steps 200 --ema_decay 0.999 "${INIT_STUDENT_ARGS[@]}" \
  --mixed_precision "$MIXED_PRECISION" --checkpointing_steps "$CHECKPOINT_STEPS" --checkpoints_total_limit 2 \
  --report_to none --dataloader_num_workers "$WORKERS" --seed 0 --resume_from_checkpoint latest

# Stage 3: the shipped files, EMA weights in fp16 (more mantissa than bf16; weights are far
# inside its range). The loader casts them back to float32 (or the dtype asked for).
for role in teacher student; do
  src=$WORK/$role/$role.safetensors
  [ "$role" = teacher ] && src=$TEACHER_FILE
  if [ "$(realpath -m "$src")" = "$(realpath -m "$WEIGHTS_DIR/$NAME-$role.safetensors")" ]; then
    continue  # a TEACHER that is already the shipped file
  fi
  "$PYTHON" -m oftsr convert "$src" "$WEIGHTS_DIR/$NAME-$role.safetensors" --dtype fp16 --overwrite
  size=$(stat -c %s "$WEIGHTS_DIR/$NAME-$role.safetensors")
  if [ "$size" -gt $((40 * 1000 * 1000)) ]; then
    echo "error: $NAME-$role.safetensors is $size bytes, over the 40 MB a bundled file may take" >&2; exit 1
  fi
done

# Stage 4: evaluation against bicubic and the reference networks (their rows need the
# evaluation extra; NO_BASELINES=1 leaves them out). x4: Set5 and Set14 (bicubic LR made
# from the HR); x4-real: RealSR-Canon, its real LR as given. The teacher with 16 midpoint
# steps (NFE 31), the student at t = 0, 0.25, 0.5, 0.75, 1.
if [ "${EVAL:-1}" = 1 ]; then
  BASELINES=(--baseline dat-light realesrgan)
  [ "${NO_BASELINES:-0}" = 1 ] && BASELINES=()
  if [ "$NAME" = x4 ]; then sets=(Set5 Set14); else sets=(RealSR-Canon); fi
  for set in "${sets[@]}"; do
    "$PYTHON" -m oftsr eval --model "$WEIGHTS_DIR/$NAME-student.safetensors" "$WEIGHTS_DIR/$NAME-teacher.safetensors" \
      --data "$DATA/val/$set" --steps 16 "${BASELINES[@]}" --out "$WORK/eval-$set"
  done
fi
