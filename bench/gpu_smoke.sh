#!/usr/bin/env bash
# The GPU path end to end on randomly initialised models (no weights to download): a SmolLM2-135M-
# shaped model (the embedded default's shape and tokenizer) and a 1B Llama-shaped one.
#
#   bench/gpu_smoke.sh MODEL_DIR_WITH_CONFIG_AND_TOKENIZER [OUT]
#
# 1. bench/scale.py on one GPU: a task-drop scoring pass and healing steps (seconds, per layer).
# 2. A real `ild run` on the GPU: iterative-distill, 30 -> 27 layers, healing, export (scores are
#    a random model's: this checks the path, not quality).
# 3. engine.measure on the teacher and the exported student: prefill/decode tokens/s, peak memory.
# 4. The same measurement for the 1B-shaped teacher and a 12-of-16-layer copy of it.
# 5. The paper suite (PAPER=0 skips it): a Qwen2.5-1.5B-shaped model with random weights and a
#    Qwen-style tokenizer trained here (bench/paper_smoke.py: ChatML tokens, <|im_end|> ending a
#    turn, <|endoftext|> as EOS), the paper suite on tests/fixtures/paper rows in the Hub schemas
#    (layout plain, LLMTF's non_instruct_simple; GEN_TOKENS new tokens at most): `ild suite check`
#    (full model, layer 1 and a middle layer skipped, with times), then one iterative-distill
#    removal healed by one step at seq_len 2048 (HEAL_SEQ) on the GPU, with its tokens/s.
# DEVICE=cpu BIG=0 TARGET=29 TOKENS=8192 SCALE_ARGS="--items 4 --steps 1" try the script on a CPU first.
set -u
export PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
BIG=${BIG:-1}
PAPER=${PAPER:-1}
GEN_TOKENS=${GEN_TOKENS:-64}
HEAL_SEQ=${HEAL_SEQ:-2048}
PAPER_LAYERS=${PAPER_LAYERS:-28}
TARGET=${TARGET:-27}
TOKENS=${TOKENS:-65536}
SRC=${1:?config+tokenizer directory}
OUT=${2:-${OUT:-/tmp/ild-gpu}}
mkdir -p "$OUT"
WORK=$(mktemp -d)
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - "$SRC" "$WORK" "$DEVICE" "$BIG" <<'EOF'
import json, shutil, sys, time
from pathlib import Path
import torch
from transformers import AutoConfig, AutoModelForCausalLM
src, work, device, big = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
torch.manual_seed(0)
for name, changes in (("smol", {}), ("llama1b", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                                       num_attention_heads=32, num_key_value_heads=8, head_dim=64))):
    if name == "llama1b" and not big:
        continue
    t = time.perf_counter()
    config = AutoConfig.from_pretrained(src)
    for k, v in changes.items():
        setattr(config, k, v)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = work / name
    model.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(src / f, out / f)
    if name == "llama1b":  # the student: 12 of its 16 layers, as an export would hold them
        from engine.models.surgery import remove_layers
        remove_layers(model, [4, 7, 10, 13])
        model.save_pretrained(work / "llama1b-12")
        for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(src / f, work / "llama1b-12" / f)
    print(f"{name}: {sum(p.numel() for p in model.parameters())/1e6:.1f}M parameters, {time.perf_counter()-t:.1f} s", flush=True)
EOF
echo "== scale (one GPU)"
timeout 180 python3 bench/scale.py --model "$WORK/smol" --device "$DEVICE" --processes 1 ${SCALE_ARGS:-} 2>&1 | tee "$OUT/scale.txt"
echo "== ild run on cuda"
start=$(date +%s)
timeout 240 python3 -m ild_tui.cli run --model "$WORK/smol" --strategy iterative-distill --target-layers "$TARGET" \
  --device "$DEVICE" --report-suite none --headless --name gpu-smoke --runs-dir "$WORK/runs" \
  --set heal.train_tokens="$TOKENS" 2>&1 | tail -40 | tee "$OUT/run.txt"
echo "run took $(( $(date +%s) - start )) s" | tee -a "$OUT/run.txt"
cp "$WORK/runs/gpu-smoke/events.jsonl" "$OUT/events.jsonl" 2>/dev/null
echo "== measure"
BIGS=""; [ "$BIG" = 1 ] && BIGS="$WORK/llama1b $WORK/llama1b-12"
timeout 120 python3 -m engine.measure "$WORK/smol" "$WORK/runs/gpu-smoke/export" $BIGS \
  --device "$DEVICE" --json 2>&1 | tee "$OUT/measure.jsonl"

if [ "$PAPER" = 1 ]; then
  echo "== paper suite on a Qwen2.5-1.5B-shaped model (random weights, Qwen-style tokenizer built here)"
  timeout 300 python3 bench/paper_smoke.py "$WORK/paper" --layers "$PAPER_LAYERS" --gen-tokens "$GEN_TOKENS" \
    2>&1 | tee "$OUT/paper_setup.txt"
  start=$(date +%s)
  timeout 600 python3 -m ild_tui.cli suite check --model "$WORK/paper/model" --suite "$WORK/paper/paper.yaml" \
    --device "$DEVICE" 2>&1 | tee "$OUT/paper_suite_check.txt"
  echo "suite check took $(( $(date +%s) - start )) s" | tee -a "$OUT/paper_suite_check.txt"
  start=$(date +%s)
  timeout 900 python3 -m ild_tui.cli run --model "$WORK/paper/model" --strategy iterative-distill \
    --target-layers $(( PAPER_LAYERS - 1 )) --suite "$WORK/paper/paper.yaml" --report-suite none \
    --device "$DEVICE" --headless --name paper-smoke --runs-dir "$WORK/runs" \
    --set heal.seq_len="$HEAL_SEQ" --set heal.batch_size=1 --set heal.grad_accum=1 \
    --set heal.train_tokens="$HEAL_SEQ" --set heal.heldout_tokens="$HEAL_SEQ" 2>&1 | tail -40 | tee "$OUT/paper_run.txt"
  echo "paper run took $(( $(date +%s) - start )) s" | tee -a "$OUT/paper_run.txt"
  cp "$WORK/runs/paper-smoke/events.jsonl" "$OUT/paper_events.jsonl" 2>/dev/null
  python3 - "$OUT/paper_events.jsonl" <<'EOF' 2>&1 | tee -a "$OUT/paper_run.txt"
import json, sys
events = [json.loads(line) for line in open(sys.argv[1])]
steps = [e for e in events if e["type"] == "train_step"]
for e in steps:
    print(f"healing step {e['step']}: loss {e.get('loss')}, {e.get('tokens_per_s')} tokens/s")
for e in (e for e in events if e["type"] == "eval"):
    print(f"eval {e['stage']} {e.get('part', 'report')}: aggregate {e['aggregate']}")
print(f"{len(steps)} healing steps")
EOF
fi
