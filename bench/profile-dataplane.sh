#!/usr/bin/env bash
# bench/profile-dataplane.sh: one Sessile worker under wrk, with the proxy's CPU per request,
# and optionally its system calls per request (strace -c) or a perf profile.
#
# Layout as in the shared harness: 3 nginx backends (127.0.0.1:9301-9303) and wrk on core
# LOAD_CPU (0), `sessile serve --workers 1` (via bench/ours.sh) on core PROXY_CPU (1).
#
#   bench/profile-dataplane.sh                      # cookie mode, persisted sessions, 8 s
#   MODE=header SCENARIO=new bench/profile-dataplane.sh
#   PROFILE=strace DURATION=3 bench/profile-dataplane.sh   # syscalls per request
#   PROFILE=perf bench/profile-dataplane.sh                # perf record -g (cpu-clock) -> perf.data
#   PROFILE=callgrind CONNS=10 bench/profile-dataplane.sh  # user-space instructions per request
#        (reproducible under load: use it for A/B comparisons; the proxy runs ~50x slower)
#   PROFILE=callgrind CALLGRIND_OPTS=--cache-sim=yes ...  # plus simulated cache misses per request
#
#   PROXY=haproxy bench/profile-dataplane.sh               # the same layout with HAProxy 'cookie insert'
#        (user/system split and system calls of the anchor, to compare with Sessile's)
# Knobs: MODE=cookie|header|none  SCENARIO=persisted|new  DURATION=8  CONNS=50  PROXY=sessile|haproxy
#        BODY_BYTES=0 (the backends' 15-byte answer; N: every response carries an N-byte body)
#        PROFILE=none|strace|perf  LOAD_CPU=0 PROXY_CPU=1  SESSILE_BIN  OUT=bench/results/profile-<ts>
#        PERF_FREQ=2000 PERF_CALLGRAPH=fp (or dwarf: slower, but sees through frame-pointer-less code)
# Prints req/s, proxy CPU us/request (utime+stime from /proc), loopback TCP segments per request
# (nstat, when installed), and the profile summary.
# Everything it starts is stopped by PID on exit.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODE=${MODE:-cookie} SCENARIO=${SCENARIO:-persisted} DURATION=${DURATION:-8} CONNS=${CONNS:-50}
PROFILE=${PROFILE:-none} PROXY=${PROXY:-sessile} LOAD_CPU=${LOAD_CPU:-0} PROXY_CPU=${PROXY_CPU:-1}
BODY_BYTES=${BODY_BYTES:-0}
OUT=${OUT:-$here/results/profile-$(date +%Y%m%d-%H%M%S)}
export SESSILE_BIN=${SESSILE_BIN:-$here/../target/release/sessile}
mkdir -p "$OUT/logs"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${pids[@]}"; do kill -KILL -- "-$p" 2>/dev/null || true; done
}
trap cleanup EXIT
start() { # name cpu cmd...
  local name=$1 cpu=$2
  shift 2
  setsid taskset -c "$cpu" "$@" >"$OUT/logs/$name.log" 2>&1 </dev/null &
  pids+=($!)
}
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

for i in 1 2 3; do
  port=$((9300 + i)) dir="$OUT/nginx-b$i"
  mkdir -p "$dir"
  if [ "$BODY_BYTES" -gt 0 ]; then
    head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x' >"$dir/body"
    body_directive="root $dir; rewrite ^ /body break;"
  else
    body_directive="return 200 \"hello from b$i\\n\";"
  fi
  cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/cb; proxy_temp_path $dir/p; fastcgi_temp_path $dir/f; uwsgi_temp_path $dir/u; scgi_temp_path $dir/s;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / { default_type text/plain; add_header x-backend b$i always; $body_directive }
  }
}
EOF
  start "b$i" "$LOAD_CPU" nginx -c "$dir/nginx.conf"
done
for i in 1 2 3; do wait_port $((9300 + i)); done

# The proxy's command prefix: callgrind counts either proxy's instructions (HAProxy's too, to
# compare with Sessile's); ours.sh runs SESSILE_BIN, so Sessile gets a wrapper script.
under=()
if [ "$PROFILE" = callgrind ]; then
  # shellcheck disable=SC2206 # CALLGRIND_OPTS is a list of options
  under=(valgrind --tool=callgrind ${CALLGRIND_OPTS:-} --callgrind-out-file="$OUT/callgrind.%p.out")
  real=$SESSILE_BIN
  export SESSILE_BIN=$OUT/sessile-under-callgrind
  printf '#!/bin/sh\nexec %s %s "$@"\n' "${under[*]}" "$real" >"$SESSILE_BIN"
  chmod +x "$SESSILE_BIN"
fi
PORT=8310
if [ "$PROXY" = haproxy ]; then
  MODE=cookie
  cat >"$OUT/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse safe
frontend fe
  bind 127.0.0.1:$PORT
  default_backend be
backend be
  balance roundrobin
  cookie sticky insert indirect nocache
  server b1 127.0.0.1:9301 cookie b1
  server b2 127.0.0.1:9302 cookie b2
  server b3 127.0.0.1:9303 cookie b3
EOF
  start haproxy "$PROXY_CPU" "${under[@]}" haproxy -db -f "$OUT/haproxy.cfg"
  wait_port $PORT
  spid=${pids[-1]}
else
  start sessile "$PROXY_CPU" env PORT=$PORT BACKENDS=127.0.0.1:9301,127.0.0.1:9302,127.0.0.1:9303 \
    STICKY_MODE="$MODE" WORKERS=1 bash "$here/ours.sh"
  wait_port $PORT
  # ours.sh (pids[-1], after setsid/taskset/env exec) runs `sessile serve` as its child.
  spid=$(pgrep -P "${pids[-1]}" -f 'serve --config' | head -1)
  [ -n "$spid" ] || { echo "sessile process not found" >&2; exit 1; }
fi

[ "$PROFILE" = callgrind ] && sleep 3 # valgrind is still warming up when the port opens
# The token to replay (persisted scenario).
lua="$OUT/wrk.lua"
: >"$lua"
if [ "$SCENARIO" = persisted ]; then
  case "$MODE" in
    cookie)
      tok=$(curl -s -D - -o /dev/null "http://127.0.0.1:$PORT/" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(sticky=[^;]*\).*/\1/p' | head -1)
      echo "wrk.headers[\"Cookie\"] = \"$tok\"" >"$lua" ;;
    header)
      tok=$(curl -s -D - -o /dev/null "http://127.0.0.1:$PORT/" | tr -d '\r' | sed -n 's/^[Xx]-[Ss]ticky: \(.*\)/\1/p' | head -1)
      echo "wrk.headers[\"x-sticky\"] = \"$tok\"" >"$lua" ;;
  esac
fi

ticks() { awk '{print $14 + $15}' "/proc/$spid/stat"; }
sys_ticks() { awk '{print $15}' "/proc/$spid/stat"; }
minor_faults() { awk '{print $10}' "/proc/$spid/stat"; }
# Sleeps in epoll_wait: each one costs a wake-up (an IPI when the core was idle).
ctx_switches() { awk '/^voluntary_ctxt_switches/{print $2}' "/proc/$spid/status"; }
hz=$(getconf CLK_TCK)
# Warm up the upstream pool.
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s -s "$lua" "http://127.0.0.1:$PORT/" >/dev/null
t0=$(ticks) s0=$(sys_ticks) f0=$(minor_faults) c0=$(ctx_switches)
# Loopback TCP segments (all processes: proxy, wrk and backends) during the measured run.
export NSTAT_HISTORY=$OUT/nstat.history
command -v nstat >/dev/null && nstat -n
case "$PROFILE" in
  strace) strace -c -f -p "$spid" -o "$OUT/strace.txt" & prof=$! ;;
  callgrind) callgrind_control -z "$spid" >/dev/null; prof= ;;
  perf) perf record -F "${PERF_FREQ:-2000}" --call-graph "${PERF_CALLGRAPH:-fp}" -o "$OUT/perf.data" -p "$spid" 2>"$OUT/logs/perf.log" & prof=$! ;;
  *) prof= ;;
esac
sleep 0.3
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$lua" "http://127.0.0.1:$PORT/" | tee "$OUT/wrk.txt"
t1=$(ticks) s1=$(sys_ticks) f1=$(minor_faults) c1=$(ctx_switches)
command -v nstat >/dev/null && nstat -z >"$OUT/nstat.txt"
if [ -n "$prof" ]; then kill -INT "$prof" 2>/dev/null || true; wait "$prof" 2>/dev/null || true; fi
reqs=$(awk '/requests in/{print $1}' "$OUT/wrk.txt")
if [ "$PROFILE" = callgrind ]; then
  callgrind_control -d "$spid" >/dev/null
  sleep 1
  dump=$(ls -t "$OUT"/callgrind.*.out.* 2>/dev/null | head -1)
  ir=$(awk '/^(summary|totals):/{print $2; exit}' "$dump")
  echo "user-space instructions: $ir over $reqs requests = $((ir / reqs)) Ir/request ($dump)"
  # With CALLGRIND_OPTS=--cache-sim=yes: every simulated event per request (D1mr: L1 data read misses).
  awk -v n="$reqs" '/^events:/{for (i = 2; i <= NF; i++) e[i] = $i} /^(summary|totals):/{for (i = 3; i <= NF; i++) printf "  %s %.1f/request\n", e[i], $i / n; exit}' "$dump"
fi
echo "proxy=$PROXY mode=$MODE scenario=$SCENARIO load=$(cut -d' ' -f1-3 /proc/loadavg)"
awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$reqs" -v s=$((s1 - s0)) -v f=$((f1 - f0)) -v c=$((c1 - c0)) 'BEGIN{printf "proxy CPU: %.1f us/request (user %.1f, system %.1f; %d requests; %.3f page faults/request; %.3f sleeps/request)\n", t / hz * 1e6 / n, (t - s) / hz * 1e6 / n, s / hz * 1e6 / n, n, f / n, c / n}'
if [ -s "$OUT/nstat.txt" ]; then
  echo "TCP segments per request on loopback (every process; nstat):"
  awk -v n="$reqs" '$1 ~ /^(TcpInSegs|TcpOutSegs|TcpExtDelayedACKs|TcpExtTCPPureAcks|TcpExtTCPHPAcks|TcpExtTCPHPHits|TcpExtTCPAutoCorking|TcpExtTCPBacklogCoalesce)$/ {printf "  %-26s %6.3f/req\n", $1, $2 / n}' "$OUT/nstat.txt"
fi
if [ "$PROFILE" = strace ]; then
  echo "system calls per request (strace slows the proxy; counts, not times, are the point):"
  awk -v n="$reqs" 'NR>2 && $NF != "total" && $4 ~ /^[0-9]+$/ {printf "  %-16s %6.2f/req  errors %s\n", $NF, $4 / n, ($5 ~ /^[0-9]+$/ ? $5 : 0)}' "$OUT/strace.txt" | sort -k2 -rn | head -12
fi
[ "$PROFILE" = perf ] && echo "perf report -i $OUT/perf.data --no-children --sort symbol | head -60"
echo "output: $OUT"
