#!/usr/bin/env bash
# Issue #9: the study and headline tables and plots from results/psfl-study/runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
psfl=${PSFL:-.venv/bin/psfl}
$psfl seeds results/psfl-study/runs --rounds 20 --out results/psfl-study --prefix study- \
    --names base,base-ev2,warmup5,regrow-dense,bn-recal,floor20,score-per-layer,pld-half,mentor-init,no-agp
$psfl seeds results/psfl-study/runs --rounds 20 --out results/psfl-study --prefix headline- \
    --names psfl=warmup5,psfl-plus,fedavg,fedavg-csc,stc,fttq,fedpaq,psfl-no-pld=no-pld,psfl-no-agp=no-agp
$psfl seeds results/psfl-study/runs --rounds 20 --out results/psfl-study --prefix mse- \
    --names psfl=warmup5,psfl-mse4=mse4,fedavg-csc,fedavg-csc-mse4
# the longer budget (configs/psfl-study-long.toml, 40 rounds; experiments/psfl-study/long.queue)
if [ -d results/psfl-study/long-runs ]; then
  for r in 20 40; do  # the same runs read at round 20 and at round 40
    $psfl seeds results/psfl-study/long-runs --rounds $r --out results/psfl-study --prefix long$r- \
        --names psfl,fedavg-csc,fedavg,fedpaq,stc,psfl-no-agp=no-agp
  done
fi
${PY:-.venv/bin/python} experiments/psfl-study/readme_tables.py
