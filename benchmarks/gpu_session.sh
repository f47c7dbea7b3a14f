#!/usr/bin/env bash
# The GPU checks of issues #37 and #18 in one short script, for a lent GPU machine with no network (CUDA
# torch, transformers and tokenizers installed; kronfluence, einconv, dattri and traker as wheels in .whl/
# if present; Ray only if the machine has it, else the local-process executor stands in and the log says).
# The steps #37 asks for come first; #18's (run on an H200 on 2026-11-26, results/gpu/) follow while the
# budget lasts.
# Every step has its own time limit and the script goes on when one fails; logs and JSON go to $OUT.
#   OUT=/tmp/out bash benchmarks/gpu_session.sh          # on the GPU machine
#   SMALL=1 OUT=/tmp/out bash benchmarks/gpu_session.sh  # the same steps at toy shapes (a CPU dry run)
#   SMALL=1 DEV=cpu INSTALL=0 ...                        # a rehearsal here, in this environment
#   ONLY='lm-fixture pythia-stages' ...                  # some steps only
set -u
OUT=${OUT:-/tmp/gpu-session}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}; DEV=${DEV:-cuda}; W=/tmp/gpu-work; mkdir -p $W
log() { echo "=== $* ($(date +%T))" | tee -a "$OUT/summary.txt"; }
DEADLINE=$((SECONDS + ${BUDGET:-540}))   # the whole script ends inside one device call
step() { local name=$1 limit=$2; shift 2; case " ${ONLY:-$name} " in *" $name "*) ;; *) return ;; esac; local left=$((DEADLINE - SECONDS)); [ $left -lt $limit ] && limit=$left
         if [ $limit -lt 15 ]; then log "$name skipped: the time budget is spent"; return; fi
         log "$name (limit ${limit}s)"; timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; local rc=$?
         grep -v -i "warn\|^  " "$OUT/$name.log" | tail -25 | tee -a "$OUT/summary.txt"; echo "rc=$rc" | tee -a "$OUT/summary.txt"; }

if [ -d .whl ]; then $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site; fi
if [ "${INSTALL:-1}" = 1 ]; then   # INSTALL=0: a rehearsal in an environment that already has tdabench
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { log "install failed"; tail "$OUT/install.log"; }
fi
$PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '', 'transformers', transformers.__version__)" | tee -a "$OUT/summary.txt"

if [ -n "${SMALL:-}" ]; then   # toy shapes: the dry run of every step
  CIFAR="--set image_size=16 --set widths=16,32,32 --set n_train=400 --set warmup_size=256 --set warmup_steps=2 --set batch_size=128 --set n_query=200"
  CIFAR8="$CIFAR --set epochs=2"; TOK=120000
  LM="--set task.n_train=16 --set task.n_query=4 --set task.context_length=128 --set task.batch_size=8 --set task.micro_batch=4"
  SMALLN="--set task.n_train=8"; QN=100
else
  CIFAR=""; CIFAR8="--set n_train=45000 --set epochs=8"; TOK=4600000; LM=""; SMALLN="--set task.n_train=256"; QN=1000
fi
BIF_SHORT="--set bif.chains=1 --set bif.draws=10 --set bif.burn_in=10"

CDATA="--set task.data_dir=$W/cifar --set task.verify=false --set task.download=false"
CTASK=$(echo $CIFAR | sed 's/--set /--set task./g')
PYTHIA="--task pythia --set task.model_name=$W/p14/model --set task.data=$W/p14/text.jsonl --set task.query_split= --set task.cache_dir=$W/cache $LM"
$PY -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from cifar10_train import write_random_cifar; write_random_cifar(Path('$W/cifar'))"

# In order of importance; random images of CIFAR's shape (no network there: accuracy is not measurable).
# #37 a. the Ray GPU path (no --serial) against a serial build of the same ground truth, piece by piece
GT37="--task cifar10 $CDATA $CTASK --set task.n_train=1000 --set task.n_query=200 --set task.warmup_steps=10 --set gt.num_subsets=8 --set gt.retrain_seeds=1 --seeds 1 --device $DEV"
step gt-serial 120 tdabench ground-truth $GT37 --serial --results-dir $W/serial
step gt-ray 120 tdabench ground-truth $GT37 --results-dir $W/ray
step gt-ray-vs-serial 30 $PY benchmarks/compare_truths.py $W/serial $W/ray --json "$OUT/ray-vs-serial.json"
# #37 b. two builds of the Pythia-shaped ground truth, deterministic kernels: bitwise equal or not
step lm-fixture 60 $PY benchmarks/lm_fixture.py --out $W/p14 --tokens $TOK
DET="$PYTHIA $SMALLN --set task.n_query=4 --set gt.num_subsets=3 --set gt.retrain_seeds=1 --seeds 1 --serial --device $DEV"
step pythia-gt-1 90 tdabench ground-truth $DET --results-dir $W/det1
step pythia-gt-2 90 tdabench ground-truth $DET --results-dir $W/det2
step pythia-determinism 30 $PY benchmarks/compare_truths.py $W/det1 $W/det2 --json "$OUT/pythia-determinism.json"
# #37 c. SOURCE, CG and TRAK with two models on CIFAR-10 at a reduced size, through Ray; MAGIC on the
#        Pythia-shaped task (CIFAR-10 has no Task.unroll: its augmentation is not a fixed chain of steps)
step cifar10-methods 150 tdabench run $GT37 --method source,cg,trak --set trak.models=2 --results-dir $W/ray --json
step pythia-magic 90 tdabench run $DET --set task.attn_implementation=eager --set task.bf16=false --method magic --results-dir $W/magic --json
# #37 d. plan against the measured peak of every stage those methods run
step plan-cifar10-methods 200 $PY benchmarks/plan_check.py --task cifar10 $CDATA $CTASK --set task.n_train=1000 \
     --set task.n_query=200 --set task.warmup_steps=10 --device $DEV --method source,cg,trak --set trak.models=2 \
     --json "$OUT/plan-cifar10-methods.json"
# 1. ResNet-9 training throughput at the paper's shapes, as `tdabench run` computes (deterministic, no TF32)
step cifar10-deterministic 90 $PY benchmarks/cifar10_train.py --random-data --device $DEV --repeats 2 $CIFAR
# 2. the user's path end to end on the GPU: ground truth, reference model, methods, LDS, record
step cifar10-run 90 tdabench run --task cifar10 $CDATA $CTASK --set task.n_train=2000 --set task.n_query=500 --set task.warmup_steps=10 \
     --set task.fit_on_full=false --set gt.num_subsets=8 --set gt.retrain_seeds=1 --seeds 1 --method gradsim,ekfac --serial --device $DEV --results-dir $W/results
# 3. Pythia-14M's shapes (a random model of its exact dimensions): each stage's time and peak memory
step pythia-stages 240 $PY benchmarks/stage_costs.py $PYTHIA --device $DEV --method ekfac --json "$OUT/pythia-stages.json"
# 4. the 8-epoch full-data recipe, and what deterministic kernels cost
step cifar10-45k-8epochs 90 $PY benchmarks/cifar10_train.py --random-data --device $DEV --repeats 1 --alpha 1 $CIFAR8
step cifar10-nondeterministic 60 $PY benchmarks/cifar10_train.py --random-data --device $DEV --repeats 2 --nondeterministic $CIFAR
# 5. gradient methods and BIF (a short chain: cost per draw) at 256 attribution sequences; CIFAR-10's methods
step pythia-gradsim-bif-256 60 $PY benchmarks/stage_costs.py $PYTHIA $SMALLN --device $DEV --method gradsim,bif $BIF_SHORT --json "$OUT/pythia-small.json"
step cifar10-stages 200 $PY benchmarks/stage_costs.py --task cifar10 $CDATA $CTASK --set task.n_query=$QN --device $DEV \
     --method gradsim,bif,ekfac $BIF_SHORT --json "$OUT/cifar10-stages.json"
# 6. the language task's user path end to end on the GPU (small: 64 sequences, 4 retrains)
step pythia-run 90 tdabench run $PYTHIA --set task.n_train=64 --set task.n_query=8 --set gt.num_subsets=4 --set gt.retrain_seeds=1 \
     --seeds 1 --method gradsim,ekfac --serial --device $DEV --results-dir $W/results
# 7. the sparse JL projection on the GPU draws the CPU's matrix (trak.projector=sparse)
step sparse-projection 60 $PY -c "
import torch; from tdabench.sparse_projection import SparseProjector
g = torch.randn(64, 300000); cpu = SparseProjector(300000, 2048, 7, 'cpu', 2)(g)
dev = SparseProjector(300000, 2048, 7, '$DEV', 2)(g.to('$DEV')).cpu()
print('sparse projection on $DEV vs cpu: max abs diff', float((dev - cpu).abs().max()), 'of', float(cpu.abs().max()))"
# 8. the memory plan (tdabench plan, traced on fake tensors on the GPU path) against each stage really run
step plan-cifar10 220 $PY benchmarks/plan_check.py --task cifar10 $CDATA $CTASK --set task.n_query=$QN --device $DEV \
     --method gradsim --trace-ops 30000 --json "$OUT/plan-cifar10.json"
step plan-pythia 240 $PY benchmarks/plan_check.py $PYTHIA --device $DEV --method ekfac --trace-ops 30000 --json "$OUT/plan-pythia.json"
# 9. GradSim on Pythia-14M shapes in the recommended passes of 5 (one projection per 2 GiB of gradients), and BIF's plan
step pythia-gradsim-passes 120 $PY benchmarks/stage_costs.py $PYTHIA $SMALLN --device $DEV --method gradsim --json "$OUT/pythia-gradsim.json"
step plan-pythia-bif 240 $PY benchmarks/plan_check.py $PYTHIA $SMALLN --device $DEV --method bif $BIF_SHORT --json "$OUT/plan-pythia-bif.json"
log done
