#!/usr/bin/env bash
# Memory of the sticky path: RSS idle, after 100 sessions and after SESSIONS (100,000) distinct
# sessions. Sessions live in tokens, not in the gateway, so RSS must stay flat (issue 6 target:
# within 10% of the RSS after 100). Uses bench/ours.sh (cookie mode, one worker) in front of three
# nginx backends on 127.0.0.1:19001-19003 and wrk without a cookie jar, so every request starts a
# new session. Needs the release binary (`cargo build --release -p sessile`), nginx and wrk.
#
#   bench/memory.sh                  # 100,000 sessions
#   SESSIONS=20000 bench/memory.sh   # quicker
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sessions=${SESSIONS:-100000}
port=${PORT:-18010}
run=$(mktemp -d -t sessile-mem.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$run"
}
trap cleanup EXIT

for tool in nginx wrk curl; do
  command -v "$tool" >/dev/null || { echo "memory.sh: $tool is required (apt-get install $tool)" >&2; exit 2; }
done

# Three nginx backends, one worker each.
for i in 1 2 3; do
  mkdir -p "$run/b$i"
  cat >"$run/b$i/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $run/b$i/nginx.pid;
error_log $run/b$i/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:1900$i; location / { add_header x-backend b$i; return 200 "hello from b$i\n"; } }
}
EOF
  nginx -e "$run/b$i/error.log" -c "$run/b$i/nginx.conf" &
  pids+=($!)
done

PORT=$port BACKENDS=127.0.0.1:19001,127.0.0.1:19002,127.0.0.1:19003 STICKY_MODE=cookie WORKERS=1 \
  setsid bash "$here/ours.sh" &
pids+=($!)
ours=$!

for _ in $(seq 1 100); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.1
done
gateway=$(pgrep -P "$ours" -f 'sessile serve' | head -1)
[ -n "$gateway" ] || { echo "memory.sh: gateway did not start" >&2; exit 1; }
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$gateway/status"; }

sleep 1
idle=$(rss)
# Warm up the same 8 connections wrk uses later with one resumed session (no new sessions), so the
# comparison below isolates what sessions cost from what connections and their buffers cost.
cookie=$(curl -fs -D - -o /dev/null "http://127.0.0.1:$port/" | awk -F'[:;] *' 'tolower($1) == "set-cookie" { print $2; exit }')
wrk -t1 -c8 -d2s -H "Cookie: $cookie" "http://127.0.0.1:$port/" >/dev/null
warm=$(rss)
for _ in $(seq 1 99); do curl -fs -o /dev/null "http://127.0.0.1:$port/"; done
after100=$(rss)
done_requests=100
while [ "$done_requests" -lt "$sessions" ]; do
  n=$(wrk -t1 -c8 -d2s "http://127.0.0.1:$port/" | awk '/requests in/ { print $1 }')
  done_requests=$((done_requests + n))
done
after=$(rss)
awk -v idle="$idle" -v warm="$warm" -v a="$after100" -v b="$after" -v n="$done_requests" 'BEGIN {
  printf "idle RSS: %.1f MiB\n", idle / 1024
  printf "RSS after warm-up (8 connections, one session): %.1f MiB\n", warm / 1024
  printf "RSS after 100 sessions: %.1f MiB\n", a / 1024
  printf "RSS after %d sessions: %.1f MiB (%+.1f%% vs 100)\n", n, b / 1024, (b - a) * 100 / a
}'
