#!/usr/bin/env bash
# Shared encoder vs one encoder per channel, at equal training compute (docs/models.md, "Why one shared encoder").
#
#   RISKSTREAM_SEED_DATA=../shared/data scripts/compare_layouts.sh OUT_DIR
#
# shared: 0.5 epoch over all four tasks (755 steps on the seed data). The news-only and customer-service-only
# encoders get the steps their tasks draw in the shared run (task weights 0.538 and 0.462 at the default sampling
# temperature 2), so every task sees the same number of batches in both layouts. Fixed steps, no time budget:
# the comparison does not depend on how busy the machine is. Takes about 25 minutes on an idle 2-core CPU.
set -euo pipefail
out=${1:?usage: compare_layouts.sh OUT_DIR}
: "${RISKSTREAM_SEED_DATA:?set RISKSTREAM_SEED_DATA to the seed data folder}"
root=$(cd "$(dirname "$0")/.." && pwd)
riskstream=${RISKSTREAM_BIN:-$root/.venv/bin/riskstream}
export HF_HUB_OFFLINE=1
mkdir -p "$out"
out=$(cd "$out" && pwd)

run() {
  local name=$1
  shift
  mkdir -p "$out/$name"
  echo "training $name ($*), log in $out/$name/run.log" >&2
  # each layout in its own data dir (own registry); the per-channel runs are not promoted (their other heads are
  # untrained), which is expected: only their dev metrics are read
  RISKSTREAM_DATA_DIR="$out/$name" "$riskstream" finetune run --max-train-minutes 0 "$@" \
    >"$out/$name/summary.json" 2>"$out/$name/run.log"
}

run shared --epochs 0.5
run news --epochs 0.269 --task-weight-multipliers '{"cs_sentiment": 0, "cs_topic": 0}'
run cs --epochs 0.231 --task-weight-multipliers '{"news_sentiment": 0, "news_topic": 0}'

"$root/.venv/bin/python" - "$out" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
dev = {name: json.loads((out / name / "summary.json").read_text())["dev"] for name in ("shared", "news", "cs")}
channel = {"financial_phrasebank": "news", "fin_tweets_sentiment": "news", "fin_tweets_topic": "news",
           "banking77": "cs", "cs_sentiment": "cs"}
print(f"{'dev set':22s} {'shared acc/F1':>15s} {'per-channel acc/F1':>20s} {'change (points)':>16s}")
for dataset, layout in channel.items():
    a, b = dev["shared"][dataset], dev[layout][dataset]
    print(f"{dataset:22s} {a['accuracy']:7.3f}/{a['macro_f1']:.3f} {b['accuracy']:12.3f}/{b['macro_f1']:.3f} "
          f"{100 * (b['accuracy'] - a['accuracy']):+8.1f}/{100 * (b['macro_f1'] - a['macro_f1']):+.1f}")
EOF
