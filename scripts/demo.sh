#!/usr/bin/env bash
# The five-minute tour of ztgate: a relay, a gateway with two backends and
# two agents of two tenants, each in its own network namespace, driven with
# dig, curl and ping as a user would. It shows names and VIPs, an agent's
# session with the gateway forwarded by the relay, tenants, a backend
# failing and then both, and a live reload; every step is checked
# and the script exits non-zero when one does not do what it says.
#
#   sudo scripts/demo.sh [ZTGATE [TESTBACKEND]]     (`make demo` builds both)
#
# Everything stays on this machine: the namespaces are joined by veth pairs
# on documentation ranges (203.0.113.0/24 to the relay, 192.0.2.0/24 to the
# backends), and the VIPs are only reached from the agents' namespaces,
# whose routes lead into their own TUN devices. On exit (also after Ctrl-C
# or a failed step) every process the demo started is stopped by its PID and
# its namespaces and files are removed.
set -uo pipefail

ZTGATE=$(realpath "${1:-bin/ztgate}")
BACKEND=$(realpath "${2:-bin/testbackend}")

if [ "$(id -u)" != 0 ]; then
	echo "demo: the demo creates network namespaces and TUN devices: run it as root (sudo make demo)" >&2
	exit 1
fi
for tool in ip dig curl ping timeout; do
	command -v "$tool" >/dev/null || { echo "demo: $tool is not installed (apt-get install iproute2 dnsutils curl iputils-ping coreutils)" >&2; exit 1; }
done
for bin in "$ZTGATE" "$BACKEND"; do
	[ -x "$bin" ] || { echo "demo: $bin is not an executable: run \`make demo\`, which builds it" >&2; exit 1; }
done

P="ztd$(($$ % 100000))" # prefix of this run's namespaces and interfaces
WORK=$(mktemp -d "/tmp/ztgate-demo.XXXXXX")
declare -A PID=() # process name → PID
NSS=()
ETC_NETNS_MADE=
STARTED=$SECONDS

# ---- output ---------------------------------------------------------------

if [ -t 1 ]; then B=$'\e[1m' D=$'\e[2m' G=$'\e[32m' R=$'\e[31m' N=$'\e[0m'; else B= D= G= R= N=; fi

step() { printf '\n%s── %s%s\n' "$B" "$*" "$N"; }
note() { printf '%s%s%s\n' "$D" "$*" "$N"; }
ok() { printf '%s✓ %s%s\n' "$G" "$*" "$N"; }

# fail reports a step that did not do what it said, with the end of every
# log, and exits 1 (cleanup runs on exit).
fail() {
	printf '\n%s✗ FAILED: %s%s\n' "$R" "$*" "$N"
	for name in "${!PID[@]}"; do
		printf '%s--- last lines of %s ---%s\n' "$D" "$name" "$N"
		tail -n 15 "$WORK/$name.log" 2>/dev/null
	done
	exit 1
}

# ---- namespaces and processes ---------------------------------------------

nsname() { echo "$P-$1"; }

# on NS CMD... runs a command inside a namespace, bounded to 20 s.
on() {
	local ns=$1
	shift
	timeout 20 ip netns exec "$(nsname "$ns")" "$@"
}

# run NS CMD... prints the command as a user would type it there, runs it,
# prints its output and returns its status.
run() {
	local ns=$1
	shift
	local shown="$*"
	[ "$1" = sh ] && [ "${2:-}" = -c ] && shown=$3
	printf '%s%s$ %s%s\n' "$B" "$ns" "${shown//$ZTGATE/ztgate}" "$N"
	local out rc
	out=$(on "$ns" "$@" 2>&1)
	rc=$?
	[ -n "$out" ] && printf '%s\n' "$out"
	LAST=$out
	return $rc
}

# start NAME NS CMD... runs a long-lived process in a namespace; its log is
# $WORK/NAME.log. `ip netns exec` execs the command, so $! is its PID.
start() {
	local name=$1 ns=$2
	shift 2
	ip netns exec "$(nsname "$ns")" "$@" >"$WORK/$name.log" 2>&1 &
	PID[$name]=$!
}

# stop NAME sends SIGTERM to the process by its PID, waits up to 5 s, then
# SIGKILL.
stop() {
	local name=$1 pid=${PID[$1]:-}
	[ -n "$pid" ] || return 0
	if kill -TERM "$pid" 2>/dev/null; then
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null
	fi
	wait "$pid" 2>/dev/null
	unset "PID[$name]"
}

# wait_log NAME TEXT waits up to 15 s for a process to print TEXT.
wait_log() {
	local name=$1 text=$2
	for _ in $(seq 150); do
		grep -q "$text" "$WORK/$name.log" 2>/dev/null && return 0
		kill -0 "${PID[$name]}" 2>/dev/null || fail "$name exited: $(tail -n 5 "$WORK/$name.log")"
		sleep 0.1
	done
	fail "$name did not print \"$text\" within 15 s"
}

# until_ok SECONDS WHAT CMD... retries a quiet command every 200 ms until it
# succeeds.
until_ok() {
	local secs=$1 what=$2
	shift 2
	local deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		[ "$SECONDS" -lt "$deadline" ] || fail "$what: not within $secs s"
		sleep 0.2
	done
}

# stop_all sends SIGTERM to every process of the demo by its PID, waits up
# to 6 s for all of them, then SIGKILLs what is left.
stop_all() {
	local pid alive
	for pid in "${PID[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for _ in $(seq 60); do
		alive=
		for pid in "${PID[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		[ -n "$alive" ] || break
		sleep 0.1
	done
	for pid in "${PID[@]}"; do
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	PID=()
}

cleanup() {
	local rc=$?
	trap '' INT TERM HUP PIPE # a second Ctrl-C does not cut the cleanup short
	trap - EXIT
	step "Cleaning up"
	stop_all
	for ns in "${NSS[@]}"; do
		ip netns del "$ns" 2>/dev/null
		rm -rf "/etc/netns/$ns"
	done
	[ -n "$ETC_NETNS_MADE" ] && rmdir /etc/netns 2>/dev/null
	rm -rf "$WORK"
	note "stopped every process of the demo, deleted namespaces $P-*"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'exit 129' HUP PIPE # a closed terminal or a dropped ssh session cleans up too

mkns() {
	local ns
	ns=$(nsname "$1")
	ip netns add "$ns" || fail "ip netns add $ns"
	NSS+=("$ns")
	ip -n "$ns" link set lo up
}

NLINK=0
# link NS_A ADDR_A NS_B ADDR_B joins two namespaces with a veth pair.
link() {
	NLINK=$((NLINK + 1))
	local a="${P}a$NLINK" b="${P}b$NLINK"
	# Made in place: a pair made in the root namespace would stay there if
	# the demo were cut off before moving it.
	ip link add "$a" netns "$(nsname "$1")" type veth peer name "$b" netns "$(nsname "$3")" || fail "ip link add $a"
	ip -n "$(nsname "$1")" addr add "$2" dev "$a"
	ip -n "$(nsname "$3")" addr add "$4" dev "$b"
	ip -n "$(nsname "$1")" link set "$a" up
	ip -n "$(nsname "$3")" link set "$b" up
	LASTDEV=$b
}

# ---- the tour -------------------------------------------------------------

step "Setting up (namespaces $P-*, files in $WORK)"
cat <<EOF
  alice (agent, tenant acme)   203.0.113.2 ─┐
  bob   (agent, tenant globex) 203.0.113.6 ─┼─ relay ─ 203.0.113.10 gateway ─ 192.0.2.1 ─┬─ backend1 192.0.2.10
                                            │                                           └─ backend2 192.0.2.11
  Both agents route the VIP pool 10.100.0.0/24 into their TUN device and ask 10.100.0.1 for names.
EOF
for ns in relay gw be alice bob; do mkns "$ns"; done
link relay 203.0.113.1/30 alice 203.0.113.2/30
link relay 203.0.113.5/30 bob 203.0.113.6/30
link relay 203.0.113.9/30 gw 203.0.113.10/30
link gw 192.0.2.1/24 be 192.0.2.10/24
ip -n "$(nsname be)" addr add 192.0.2.11/24 dev "$LASTDEV"
[ -d /etc/netns ] || ETC_NETNS_MADE=1
for ns in alice bob; do # names in the agents' namespaces come from the agent's DNS
	mkdir -p "/etc/netns/$(nsname "$ns")"
	printf 'nameserver 10.100.0.1\nsearch ztna.internal\n' >"/etc/netns/$(nsname "$ns")/resolv.conf"
	# and from it alone: the host's name service may hand names to a daemon
	# outside the namespace (systemd-resolved's "resolve", mDNS), which would
	# send queries for the zone out of this machine.
	{ grep -v '^hosts:' /etc/nsswitch.conf 2>/dev/null; echo 'hosts: files dns'; } >"/etc/netns/$(nsname "$ns")/nsswitch.conf"
done

PKI=$WORK/pki
{
	"$ZTGATE" pki init -dir "$PKI" -name "ztgate demo CA" &&
		"$ZTGATE" pki issue -dir "$PKI" -role relay -tenant infra -name relay1 -dns relay.demo -ip 203.0.113.1,203.0.113.5,203.0.113.9 &&
		"$ZTGATE" pki issue -dir "$PKI" -role gateway -tenant infra -name gw1 &&
		"$ZTGATE" pki issue -dir "$PKI" -role agent -tenant acme -name alice &&
		"$ZTGATE" pki issue -dir "$PKI" -role agent -tenant globex -name bob
} >"$WORK/pki.log" 2>&1 || fail "ztgate pki: $(cat "$WORK/pki.log")"
note "certificates: ztgate pki init, then ztgate pki issue for relay1, gw1, alice (acme) and bob (globex)"

cat >"$WORK/relay.toml" <<EOF
[relay]
name = "relay1"
listen = "0.0.0.0:4433"
state_dir = "$WORK/relay-state"
cert = "$PKI/relay1.crt"
key = "$PKI/relay1.key"
ca = "$PKI/ca.crt"
# Agents reach the gateway's listener end to end through these ports
# (docs/direct-path.md, "Forwarded paths").
forward_ports = "4440-4447"
[api]
listen = "127.0.0.1:7781"
EOF
cat >"$WORK/gateway.toml" <<EOF
# The gateway is attached to the relay: it takes its VIPs from the relay and
# needs no TUN device of its own.
[gateway]
name = "gw1"
state_dir = "$WORK/gw-state"
[tunnel]
relay = "203.0.113.9:4433"
listen = "0.0.0.0:4434"   # agents' own sessions, through the relay's forwarder here
server_name = "relay.demo"
cert = "$PKI/gw1.crt"
key = "$PKI/gw1.key"
ca = "$PKI/ca.crt"
[api]
listen = "127.0.0.1:7780"

[[service]]
name = "web"
tenants = ["acme"]
backends = ["192.0.2.10", "192.0.2.11"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = 8080
  [service.health]
  type = "http"
  path = "/healthz"
  interval = "500ms"
  rise = 1
  fall = 2
EOF
for a in alice:203.0.113.1 bob:203.0.113.5; do
	name=${a%%:*} server=${a#*:}
	cat >"$WORK/$name.toml" <<EOF
[agent]
name = "$name"
[tunnel]
server = "$server:4433"
server_name = "relay.demo"
cert = "$PKI/$name.crt"
key = "$PKI/$name.key"
ca = "$PKI/ca.crt"
[tun]
name = "ztagent0"
address = "100.64.0.1"
EOF
done
for f in relay gateway alice bob; do
	"$ZTGATE" check -config "$WORK/$f.toml" >/dev/null 2>&1 || fail "ztgate check $f.toml: $("$ZTGATE" check -config "$WORK/$f.toml" 2>&1)"
done
note "configurations: relay.toml, gateway.toml, alice.toml, bob.toml (ztgate check: valid)"

start backend1 be "$BACKEND" -name backend1 -http 192.0.2.10:8080 -size 65536
start backend2 be "$BACKEND" -name backend2 -http 192.0.2.11:8080 -size 65536
wait_log backend1 ready
wait_log backend2 ready
start relay relay "$ZTGATE" relay -config "$WORK/relay.toml" -log-format text
wait_log relay "relay started"
start gateway gw "$ZTGATE" gateway -config "$WORK/gateway.toml" -log-format text
wait_log gateway "gateway started"
start alice alice "$ZTGATE" agent -config "$WORK/alice.toml" -log-format text
start bob bob "$ZTGATE" agent -config "$WORK/bob.toml" -log-format text
wait_log alice "agent started"
wait_log bob "agent started"
ok "running: ztgate relay, ztgate gateway, ztgate agent ×2, two backends"

step "1. Names: alice asks the agent's DNS for the web service"
until_ok 15 "web.ztna.internal resolves for alice" bash -c "ip netns exec $(nsname alice) dig +short +time=1 +tries=1 web.ztna.internal | grep -q ."
run alice dig +short web.ztna.internal || fail "dig"
VIP=$LAST
[[ $VIP =~ ^10\.100\.0\.[0-9]+$ ]] || fail "web.ztna.internal is $VIP, not a VIP of 10.100.0.0/24"
ok "web.ztna.internal is the VIP $VIP, allocated by the relay"

step "2. HTTP through the VIP: agent → relay → gateway → a healthy backend"
until_ok 10 "alice reaches web" on alice curl -sS --max-time 2 http://web.ztna.internal/
run alice curl -sS --max-time 5 http://web.ztna.internal/hello || fail "curl http://web.ztna.internal/hello"
[[ $LAST == backend?" /hello" ]] || fail "the answer is not a backend's"
ok "answered by ${LAST% *}"
wait_log alice "direct path up"
note "alice's log: direct path up, $(grep -m1 'direct path up' "$WORK/alice.log" | grep -o 'service=.*')"
grep -q 'via="relay forwarder"' "$WORK/alice.log" || fail "alice's path is not the relay's forwarder"
run relay curl -s http://127.0.0.1:7781/v1/forwarders || fail "GET /v1/forwarders"
[[ $LAST == *'"agent": "acme/agent/alice"'* ]] || fail "the relay lists no forwarder of alice"
ok "alice's next flows take her own QUIC session with the gateway, which the relay forwards without decrypting"

step "3. ping: the echo goes to a backend, the reply comes from the VIP"
run alice ping -c 2 -W 2 web.ztna.internal || fail "ping web.ztna.internal"
ok "the VIP answers ping while a backend does"

step "4. Tenants: bob (globex) neither sees nor reaches web (acme only)"
run bob dig +noall +comments web.ztna.internal
[[ $LAST == *"status: NXDOMAIN"* ]] || fail "bob's DNS does not answer NXDOMAIN for web"
t0=$(date +%s%N)
run bob curl -sS --max-time 5 "http://$VIP/" && fail "bob reached web"
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$ms" -lt 2000 ] || fail "bob's refusal took $ms ms"
ok "NXDOMAIN for bob, and his connection to $VIP is refused in $ms ms: no hang"

step "5. Status: what the gateway and the relay see"
run gw "$ZTGATE" status || fail "ztgate status on the gateway"
run relay "$ZTGATE" status -api http://127.0.0.1:7781 || fail "ztgate status on the relay"
[[ $LAST == *"gw1 healthy"* ]] || fail "the relay does not show gw1 healthy for web"

step "6. A backend fails: backend1 stops, backend2 takes every new flow"
printf '%s(stopping backend1, PID %s)%s\n' "$D" "${PID[backend1]}" "$N"
stop backend1
until_ok 10 "the gateway marks 192.0.2.10 down" bash -c "ip netns exec $(nsname gw) $ZTGATE status | grep -q '192.0.2.10 down'"
run gw "$ZTGATE" status
for i in 1 2 3 4; do
	run alice curl -sS --max-time 5 "http://web.ztna.internal/try$i" || fail "curl after backend1 stopped"
	[[ $LAST == "backend2 /try$i" ]] || fail "request $i was not answered by backend2"
done
ok "every request went to backend2"

step "7. Both backends fail: refused at once, and the name still resolves"
printf '%s(stopping backend2, PID %s)%s\n' "$D" "${PID[backend2]}" "$N"
stop backend2
until_ok 10 "the relay marks web down" bash -c "ip netns exec $(nsname relay) $ZTGATE status -api http://127.0.0.1:7781 | grep -E '^web ' | grep -q ' down '"
run relay "$ZTGATE" status -api http://127.0.0.1:7781
t0=$(date +%s%N)
run alice curl -sS --max-time 5 http://web.ztna.internal/ && fail "curl succeeded with every backend down"
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$ms" -lt 1000 ] || fail "the refusal took $ms ms"
run alice dig +short web.ztna.internal
[ "$LAST" = "$VIP" ] || fail "web.ztna.internal no longer resolves to $VIP"
ok "connection refused in $ms ms (no timeout), and web.ztna.internal still resolves to $VIP"

step "8. backend1 comes back: web is served again"
start backend1 be "$BACKEND" -name backend1 -http 192.0.2.10:8080 -size 65536
wait_log backend1 ready
until_ok 10 "alice reaches web again" on alice curl -sS --max-time 2 http://web.ztna.internal/
run alice curl -sS --max-time 5 http://web.ztna.internal/back || fail "curl after backend1 came back"
[[ $LAST == "backend1 /back" ]] || fail "not answered by backend1"
ok "web is up again, without touching the gateway"

step "9. Live reload: add a service for globex to the gateway's file"
cat <<'EOF' | tee -a "$WORK/gateway.toml"

[[service]]
name = "wiki"
tenants = ["globex"]
backends = ["192.0.2.10"]
  [[service.port]]
  protocol = "tcp"
  port = 80
  target = 8080
EOF
note "(appended to gateway.toml; the gateway watches its file — SIGHUP and POST /v1/reload work too)"
wait_log gateway "msg=reloaded"
until_ok 10 "wiki.ztna.internal resolves for bob" bash -c "ip netns exec $(nsname bob) dig +short +time=1 +tries=1 wiki.ztna.internal | grep -q ."
run bob dig +short wiki.ztna.internal || fail "dig wiki"
until_ok 10 "bob reaches wiki" on bob curl -sS --max-time 2 http://wiki.ztna.internal/
run bob curl -sS --max-time 5 http://wiki.ztna.internal/page || fail "curl http://wiki.ztna.internal/page"
[[ $LAST == "backend1 /page" ]] || fail "wiki was not answered by its backend"
run alice dig +short wiki.ztna.internal
[ -z "$LAST" ] && note "(no answer: wiki is not in acme's view)"
[ -z "$LAST" ] || fail "alice (acme) sees wiki, a globex service"
ok "wiki is live for bob, without a restart; alice does not see it"

step "10. Metrics: the gateway's /metrics after the tour"
run gw sh -c "curl -s http://127.0.0.1:7780/metrics | grep -E '^ztgate_(flows_total|backend_healthy|config_reloads_total)'" || fail "metrics"
[[ $LAST == *'ztgate_flows_total{protocol="tcp",service="web",tenant="acme"}'* ]] || fail "no flows counted for web"
[[ $LAST == *'ztgate_config_reloads_total{result="ok"} 1'* ]] || fail "the reload is not counted"

step "Done in $((SECONDS - STARTED)) s"
cat <<EOF
  Next: docs/getting-started.md sets this up on real machines, docs/configuration.md lists every key,
  docs/operations.md covers reloads, drains, upgrades and recovery.
EOF
