#!/usr/bin/env bash
# OURS_CMD for ../shared/bench/run-anchors.sh: runs `sessile serve` under the harness contract
# (PORT, BACKENDS, STICKY_MODE, STICKY_COOKIE, STICKY_HEADER, STICKY_TTL, WORKERS).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${SESSILE_BIN:-$here/../target/release/sessile}
dir=$(mktemp -d -t sessile-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
mode=${STICKY_MODE:-cookie}
case "$mode" in
  cookie) persistence="    sessionPersistence: {sessionName: ${STICKY_COOKIE:-sticky}, type: Cookie, absoluteTimeout: ${STICKY_TTL:-3600}s, cookieConfig: {lifetimeType: Permanent}}" ;;
  header) persistence="    sessionPersistence: {sessionName: ${STICKY_HEADER:-x-sticky}, type: Header, absoluteTimeout: ${STICKY_TTL:-3600}s}" ;;
  none) persistence="" ;;
  *) echo "unknown STICKY_MODE $mode" >&2; exit 2 ;;
esac
{
  printf 'apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: bench}\nspec:\n'
  printf '  gatewayClassName: sessile\n  addresses: [{type: IPAddress, value: 127.0.0.1}]\n'
  printf '  listeners: [{name: http, protocol: HTTP, port: %s}]\n' "$PORT"
  printf -- '---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bench}\nspec:\n'
  printf '  parentRefs: [{name: bench}]\n  rules:\n  - backendRefs: [{name: backends, port: 80}]\n'
  [ -n "$persistence" ] && printf '%s\n' "$persistence"
  printf -- '---\napiVersion: v1\nkind: Service\nmetadata: {name: backends}\nspec: {ports: [{name: http, port: 80}]}\n'
  i=0
  IFS=, read -ra bs <<<"$BACKENDS"
  for b in "${bs[@]}"; do
    i=$((i + 1))
    printf -- '---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: backends-%s\n' "$i"
    printf '  labels: {kubernetes.io/service-name: backends}\naddressType: IPv4\n'
    printf 'ports: [{name: http, port: %s}]\nendpoints: [{addresses: ["%s"], targetRef: {kind: Pod, name: b%s}}]\n' "${b##*:}" "${b%:*}" "$i"
  done
} >"$dir/config.yaml"
"$bin" serve --config "$dir/config.yaml" --admin 127.0.0.1:0 --state-dir "$dir/state" \
  --workers "${WORKERS:-1}" --access-log off ${SESSILE_ARGS:-} &
child=$!
trap 'kill -TERM $child 2>/dev/null; wait $child; rm -rf "$dir"' TERM INT
wait $child
