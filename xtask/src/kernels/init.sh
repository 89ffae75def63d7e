#!/bin/busybox sh
# clusterip smoke test, run as /init by `cargo xtask kernels` inside a QEMU guest.
# Prints one `CIP-RESULT <check> PASS|FAIL|INFO <detail>` line per check, then powers off.
# The initramfs holds: static busybox, /usr/bin/{clusterip-agent,cip-client,cip-backend},
# /usr/sbin/ip with the shared libraries, /modules/*.ko and /modules/order (load order).

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /var /usr/bin /usr/sbin /sbin
/bin/busybox --install -s /bin
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
ln -s /run /var/run
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
export NO_COLOR=1 RUST_LOG=info RUST_BACKTRACE=0
IP=/usr/sbin/ip

result() { echo "CIP-RESULT $*"; }
finish() {
    result done INFO
    sync
    reboot -f
    sleep 5
    poweroff -f
}

result kernel INFO "$(uname -r)"

if [ -f /modules/order ]; then
    for m in $(cat /modules/order); do
        out=$(insmod "/modules/$m" 2>&1) || result module INFO "insmod $m: $out"
    done
fi
$IP link set lo up

# Polls an agent's log until it says "synced". $1 log, $2 pid, $3 seconds.
# Returns 0 synced, 1 the agent exited, 2 timeout.
wait_synced() {
    i=0
    while [ "$i" -lt "$3" ]; do
        grep -q synced "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 1
        i=$((i + 1))
    done
    return 2
}

# Why an agent failed, on one line: its first ERROR line (up to "Verifier output:") and, when
# the verifier refused a program, the verifier's complaint (the line before "verification time").
why() {
    err=$(grep ' ERROR ' "$1" | head -n 1 | sed 's/^.* ERROR //; s/ *Verifier output:.*//')
    [ -n "$err" ] || err=$(grep -iE 'error|WARN' "$1" | head -n 1)
    [ -n "$err" ] || err=$(tail -n 1 "$1")
    ver=$(awk '/^verification time/ { print prev; exit } { prev = $0 }' "$1" | sed 's/.*Verifier output: //')
    [ -n "$ver" ] && err="$err; verifier: $ver"
    echo "$err" | tr -s ' \t' '  ' | cut -c1-400
}

dump_log() {
    sed "s/^/$2| /" "$1" | tail -n 40
}

mkdir -p /tmp/manifests
cat >/tmp/manifests/smoke.yaml <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: local, namespace: smoke}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: local-1
  namespace: smoke
  labels: {kubernetes.io/service-name: local}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
- addresses: [127.0.0.2]
  conditions: {ready: true, serving: true, terminating: false}
---
apiVersion: v1
kind: Service
metadata: {name: routed, namespace: smoke}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: routed-1
  namespace: smoke
  labels: {kubernetes.io/service-name: routed}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
- addresses: [10.0.2.2]
  conditions: {ready: true, serving: true, terminating: false}
EOF

# Checks cip-client's output: $1 file, $2 expected reply prefix, $3 expected peer, $4 count.
client_ok() {
    [ "$(grep -c . "$1")" -eq "$4" ] || return 1
    [ "$(grep -F "\"reply\":\"$2" "$1" | grep -cF "\"peer\":\"$3\"")" -eq "$4" ]
}

# ---- 1. socket-level load balancing ----------------------------------------------------------
cip-backend --name be-0 --tcp 127.0.0.2:8080 >/tmp/be0.log 2>&1 &
mkdir -p /sys/fs/cgroup/cip
started=$(date +%s)
: >/tmp/agent1.log
clusterip-agent run --manifests /tmp/manifests --cgroup /sys/fs/cgroup/cip \
    --bpffs /sys/fs/bpf/cip --node-name n >/tmp/agent1.log 2>&1 &
agent=$!
wait_synced /tmp/agent1.log $agent 60
rc=$?
took=$(($(date +%s) - started))
if [ $rc -eq 0 ]; then
    sh -c 'echo $$ > /sys/fs/cgroup/cip/cgroup.procs && exec cip-client tcp 10.96.0.10:80 --count 3' \
        >/tmp/client1.out 2>&1
    if client_ok /tmp/client1.out "be-0 " "10.96.0.10:80" 3; then
        result socket-lb PASS "3/3 connects to 10.96.0.10:80 answered by be-0 (agent synced in ${took}s)"
    else
        result socket-lb FAIL "client: $(head -n 1 /tmp/client1.out | cut -c1-300)"
        dump_log /tmp/client1.out client
    fi
elif [ $rc -eq 1 ]; then
    result socket-lb FAIL "agent exited: $(why /tmp/agent1.log)"
    dump_log /tmp/agent1.log agent1
else
    result socket-lb FAIL "agent not synced after 60s: $(why /tmp/agent1.log)"
    dump_log /tmp/agent1.log agent1
fi
kill $agent 2>/dev/null
wait $agent 2>/dev/null

# ---- 2. per-packet: TC (tcx or netlink clsact), XDP, and traffic through TC -------------------
$IP link add v0 type veth peer name v1 && $IP link set v0 up && $IP link set v1 up
# client netns cl (10.0.1.2) -- c0/c1 -- node -- b0/b1 -- backend netns be (10.0.2.2)
mkdir -p /run/netns
$IP netns add cl && $IP netns add be &&
    $IP link add c0 type veth peer name c1 && $IP link set c1 netns cl &&
    $IP link add b0 type veth peer name b1 && $IP link set b1 netns be &&
    $IP addr add 10.0.1.1/24 dev c0 && $IP link set c0 up &&
    $IP addr add 10.0.2.1/24 dev b0 && $IP link set b0 up &&
    $IP -n cl link set lo up && $IP -n cl addr add 10.0.1.2/24 dev c1 && $IP -n cl link set c1 up &&
    $IP -n cl route add default via 10.0.1.1 &&
    $IP -n be link set lo up && $IP -n be addr add 10.0.2.2/24 dev b1 && $IP -n be link set b1 up &&
    $IP -n be route add default via 10.0.2.1 &&
    echo 1 >/proc/sys/net/ipv4/ip_forward
topo=$?
$IP netns exec be cip-backend --name be-1 --tcp 10.0.2.2:8080 >/tmp/be1.log 2>&1 &

# Runs the per-packet agent with the given interface flags; sets $agent and $rc.
run_packet_agent() {
    log=$1
    shift
    : >"$log"
    clusterip-agent run --manifests /tmp/manifests --cgroup /sys/fs/cgroup/cip \
        --bpffs "/sys/fs/bpf/$(basename "$log" .log)" --node-name n --socket-lb=false "$@" \
        >"$log" 2>&1 &
    agent=$!
    wait_synced "$log" $agent 60
    rc=$?
    # Interfaces are (re)scanned every second: let every pattern be tried.
    [ $rc -eq 0 ] && sleep 3
}

# The mode an `attached` line reports for program $2 on interface $3 in log $1.
attach_mode() {
    grep 'attached' "$1" | grep "$2" | grep "iface=$3 " | tail -n 1 |
        sed -n 's/.*mode=//p' | tr -d '"'
}
# Why program $2 did not attach to $3 in log $1.
attach_why() {
    line=$(grep "$3" "$1" | grep -iE 'fail|error|warn' | tail -n 1)
    [ -n "$line" ] || line=$(why "$1")
    echo "$line" | tr -s ' \t' '  ' | cut -c1-400
}

report_tc() {
    mode=$(attach_mode "$1" tc_ingress v0)
    if [ -n "$mode" ]; then
        result tc PASS "tc_ingress on v0: $mode"
    else
        result tc FAIL "$(attach_why "$1" tc_ingress v0)"
    fi
}
report_xdp() {
    mode=$(attach_mode "$1" xdp_ingress v1)
    if [ -n "$mode" ]; then
        result xdp PASS "xdp_ingress on v1: $mode"
    else
        result xdp FAIL "$(attach_why "$1" xdp_ingress v1)"
    fi
}

run_packet_agent /tmp/agent2.log --tc-iface v0 --tc-iface c0 --tc-iface b0 --xdp-iface v1
if [ $rc -eq 0 ]; then
    report_tc /tmp/agent2.log
    report_xdp /tmp/agent2.log
    if [ $topo -ne 0 ]; then
        result tc-traffic FAIL "could not build the netns topology"
    else
        $IP netns exec cl cip-client tcp 10.96.0.20:80 --count 3 >/tmp/client2.out 2>&1
        if client_ok /tmp/client2.out "be-1 10.0.1.2" "10.96.0.20:80" 3; then
            result tc-traffic PASS "3/3 connects from netns cl to 10.96.0.20:80 DNATed to be-1, client IP kept"
        else
            result tc-traffic FAIL "client: $(head -n 1 /tmp/client2.out | cut -c1-300)"
            dump_log /tmp/client2.out client2
        fi
    fi
    kill $agent 2>/dev/null
    wait $agent 2>/dev/null
else
    # The combined run failed: try TC and XDP alone to tell which one is the problem.
    dump_log /tmp/agent2.log agent2
    kill $agent 2>/dev/null
    wait $agent 2>/dev/null
    run_packet_agent /tmp/agent-tc.log --tc-iface v0
    if [ $rc -eq 0 ]; then report_tc /tmp/agent-tc.log; else result tc FAIL "agent: $(why /tmp/agent-tc.log)"; fi
    kill $agent 2>/dev/null
    wait $agent 2>/dev/null
    run_packet_agent /tmp/agent-xdp.log --xdp-iface v1
    if [ $rc -eq 0 ]; then report_xdp /tmp/agent-xdp.log; else result xdp FAIL "agent: $(why /tmp/agent-xdp.log)"; fi
    kill $agent 2>/dev/null
    wait $agent 2>/dev/null
    result tc-traffic FAIL "not run: the per-packet agent did not start"
fi

finish
