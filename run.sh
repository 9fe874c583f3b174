#!/usr/bin/env bash
# Launch a stage the three ways the original project did. Everything after the mode is passed
# to the stage script, so the same lines run the demo data too.
#
#   bash run.sh pt single        ->  python mini_qwen_pt.py
#   bash run.sh pt multi         ->  accelerate launch --config_file accelerate_config.yaml mini_qwen_pt.py
#   bash run.sh pt background    ->  nohup accelerate launch --config_file accelerate_config.yaml mini_qwen_pt.py \
#                                        > logs/output_pt.log 2>&1 &
#   (every stage of mini_qwen/stages.py: python -m mini_qwen.stages names; the same modes for each)
#   bash run.sh pt plan --gpu H100 --num_gpus 8  ->  python mini_qwen_plan.py pt ...: memory, time, cost, disk first
#
#   # several machines: the same line on every node, only NODE_RANK differs (README "Several nodes"; under
#   # SLURM: sbatch slurm/mini_qwen.sbatch pt ...). Checks the nodes agree, then accelerate (or LAUNCHER=torchrun)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash run.sh pt nodes --config recipe.yaml
#
#   # on a CPU-only machine, 2 processes (DeepSpeed ZeRO-2 over gloo), demo data:
#   ACCELERATE_CONFIG=accelerate_config_cpu.yaml bash run.sh pt multi --config demo/pt.yaml --model_preset tiny
#   # follow a background run:  tail -f logs/output_pt.log ;  stop it:  kill $(cat logs/pt.pid)
set -euo pipefail
cd "$(dirname "$0")"
stage="${1:-}"; mode="${2:-single}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
stages="$("$PY" -m mini_qwen.stages names)"  # the table of stages, mini_qwen/stages.py
case " $stages " in *" $stage "*) [ -n "$stage" ] ;; *) false ;; esac || {
  echo "usage: bash run.sh ${stages// /|} [single|multi|background|nodes|plan] [flags...]" >&2; exit 2; }
shift; [ $# -gt 0 ] && shift
config="${ACCELERATE_CONFIG:-accelerate_config.yaml}"
script="mini_qwen_${stage}.py"
launch=("$PY" -m accelerate.commands.launch --config_file "$config" "$script")
mkdir -p logs
case "$mode" in
  single) exec "$PY" "$script" "$@" ;;
  plan) exec "$PY" mini_qwen_plan.py "$stage" "$@" ;;
  multi) exec "${launch[@]}" "$@" ;;
  nodes) exec "$PY" -m mini_qwen.nodes "$stage" "$@" ;;  # env NNODES NODE_RANK MASTER_ADDR [MASTER_PORT GPUS_PER_NODE LAUNCHER]
  background)
    nohup "${launch[@]}" "$@" > "logs/output_${stage}.log" 2>&1 &
    echo $! > "logs/${stage}.pid"
    echo "started $stage in the background (pid $(cat "logs/${stage}.pid")); log: logs/output_${stage}.log" ;;
  *) echo "unknown mode '$mode': single, multi, background, nodes or plan" >&2; exit 2 ;;
esac
