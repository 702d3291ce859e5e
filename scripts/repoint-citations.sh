#!/usr/bin/env bash
# Point the code's citations of the old, out-of-repo reference notes at the repository's own
# docs/ and tests/fixtures/payloads/. Idempotent: run it again after merging a branch that
# added new citations (it only rewrites old names, and folds a doubled prefix back).
#
#   whatsapp-calling.md §N   -> docs/meta-calling.md §N   (same section numbers)
#   webrtc-media.md          -> docs/media.md
#   asterisk-handoff.md      -> docs/asterisk-handoff.md
#   reference/payloads/X     -> tests/fixtures/payloads/X
#   whatsapp-calling-2026.md -> docs/meta-calling-2026.md, once that file exists
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

self=scripts/repoint-citations.sh
guard=tests/unit/test_self_contained.py
old='(\.\./)?(shared/)?reference/|whatsapp-calling(-2026)?\.md|webrtc-media\.md|asterisk-handoff\.md|(^|[^/])payloads/'

script=(
  -e 's#(\.\./)?(shared/)?reference/payloads/#tests/fixtures/payloads/#g'
  -e 's#(\.\./)?(shared/)?reference/payloads\b#tests/fixtures/payloads#g'
  -e 's#(\.\./)?(shared/)?reference/##g'
  -e 's#whatsapp-calling\.md#docs/meta-calling.md#g'
  -e 's#webrtc-media\.md#docs/media.md#g'
  -e 's#asterisk-handoff\.md#docs/asterisk-handoff.md#g'
  -e 's#(^|[^/A-Za-z_.-])payloads/#\1tests/fixtures/payloads/#g'
  -e 's#(docs/)+#docs/#g'
  -e 's#(tests/fixtures/)+payloads/#tests/fixtures/payloads/#g'
)
if [ -f docs/meta-calling-2026.md ]; then
  script+=(-e 's#whatsapp-calling-2026\.md#docs/meta-calling-2026.md#g')
fi

mapfile -t files < <(grep -rlE "$old" gateway scripts tests benchmarks monitoring asterisk-conf \
  README.md Dockerfile compose.yml 2>/dev/null | grep -vxF -e "$self" -e "$guard" || true)
for f in "${files[@]}"; do
  sed -i -E "${script[@]}" "$f"
done
left=$(grep -rnE 'whatsapp-calling-2026\.md' gateway scripts tests benchmarks monitoring \
  README.md 2>/dev/null | grep -v -e "$self" -e "$guard" || true)
if [ -n "$left" ]; then
  echo "repoint-citations: no docs/meta-calling-2026.md yet for these citations:" >&2
  echo "$left" >&2
fi
echo "repoint-citations: ${#files[@]} file(s) checked"
