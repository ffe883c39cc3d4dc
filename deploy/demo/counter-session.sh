#!/usr/bin/env bash
# The scripted counter session of the README, on a fresh SQLite registry (var/demo/ unless
# ONECARD_DB is set). The block between the markers is the README's, word for word (a test checks).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${ONECARD_DB:-}" ]; then
  rm -rf var/demo && mkdir -p var/demo
  export ONECARD_DB=var/demo/onecard.sqlite3 ONECARD_SESSION=var/demo/session.json
fi
# --- counter-session:start
oc() { .venv/bin/onecard "$@"; }
export ONECARD_NOW=2026-11-26T10:05+08:00   # business time of this training session (campus time)
echo 'First-pass-1' | oc init --admin chief --name 王科长 --password-stdin
echo 'First-pass-1' | oc login chief --password-stdin
printf 'First-pass-1\nCounter-2026\n' | oc passwd --stdin               # ACC-3
oc stock purchase temp 1000 --year 2026-2027                            # INV-1
oc stock purchase smart 2000 --year 2026-2027
oc stock requisition temp 200 --issued-by 网管科长 --usage "新生入学，柜台现存0张"  # INV-2
oc stock requisition smart 500 --issued-by 网管科长 --usage "新生入学"
oc receipts add-book R2026-01 1000001 1000050                           # FEE-2
oc holder import docs/samples/students-2026.csv --kind student --valid-through 2030-07-31  # ISS-1
oc card issue-temp 2026000001                                           # temp card 2000000000
oc money topup 2000000000 100                                           # TOP-1
oc card loss 2000000000 --id-doc 2026000001                             # LOSS-1/2
oc card issue-temp 2026000002                                           # temp card 2000000001
oc money topup 2000000001 80
oc card fault 2000000001 --id-doc 2026000002 --finding "芯片无响应，外观完好"  # EXC-3: frozen 48 h
export ONECARD_NOW=2026-11-28T09:05+08:00                               # 47 hours later
oc card replace 2000000000 --id-doc 2026000001 --kind smart || echo "REP-1 refused at 47 h"
oc card exchange 2000000001 || echo "EXC-3 refused at 47 h"
export ONECARD_NOW=2026-11-28T10:05+08:00                               # 48 hours later
oc card replace 2000000000 --id-doc 2026000001 --kind smart             # REP-1/2, fee 50 yuan
oc card exchange 2000000001                                             # EXC-3/5, balance moves
oc holder show 2026000002
export ONECARD_NOW=2026-12-01T09:00+08:00                               # two working days later
oc card hand-over 1000000000 --receipt 1000001 --id-doc 2026000001 --signed  # REP-4
oc holder register-temp --name "Anna Schmidt" --national-id 11010519491231002X \
  --category foreign_teacher --valid-through 2027-06-30 --application "外事处 2026-118"  # ISS-8..11
oc card issue-temp '#11'                                                # ISS-10 deposit, receipt
oc card refund 2000000003 --receipt 1000003 --id-doc 11010519491231002X  # REF-1..4
for n in 2026000006 2026000007 2026000008; do oc card issue-temp $n; done   # 2000000004..06
export ONECARD_NOW=2027-06-20T10:30+08:00
oc graduate --college 计算机科学与技术学院 --class 计科2026-2班 \
  --returned 2000000004,2000000005,2000000006 --missing-paid 2026000009,2026000010  # TERM-5
oc card scrap 2000000004                                                # SCR-1
# --- counter-session:end
