#!/bin/busybox sh
# clusterip smoke test, run as /init by `cargo xtask kernels` inside a QEMU guest.
# Prints one `CIP-RESULT <check> PASS|FAIL|INFO <detail>` line per check, then powers off.
# The initramfs holds: static busybox, /usr/bin/{clusterip-agent,cip-client,cip-backend},
# /usr/sbin/{ip,bpftool} with the shared libraries, /modules/*.ko and /modules/order (load
# order), and /pkt/*.bin (Ethernet frames for BPF_PROG_TEST_RUN).
# Verdicts: PASS; DEGRADED: the documented fallback of an older kernel happened (the host
# compares it with kernels/expected.toml); FAIL; INFO.

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
# One service (TCP 80 and UDP 53) whose backend lives in netns be, and one without endpoints.
cat >/tmp/manifests/smoke.yaml <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: web, namespace: smoke}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
  - {name: dns, protocol: UDP, port: 53, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: smoke
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
- {name: dns, protocol: UDP, port: 5353}
endpoints:
- addresses: [10.0.2.2]
  conditions: {ready: true, serving: true, terminating: false}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: smoke}
spec:
  type: ClusterIP
  clusterIP: 10.96.0.30
  clusterIPs: [10.96.0.30]
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
---
# Node ports on every address of the node (10.0.1.1 towards the client): to a backend on this
# node (nodeName n: DNAT only) and to the same pod said to be on another node (DNAT and SNAT
# to the node's address).
apiVersion: v1
kind: Service
metadata: {name: np-local, namespace: smoke}
spec:
  type: NodePort
  clusterIP: 10.96.0.40
  clusterIPs: [10.96.0.40]
  externalTrafficPolicy: Cluster
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: np-local-1
  namespace: smoke
  labels: {kubernetes.io/service-name: np-local}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
- addresses: [10.0.2.2]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: n
---
apiVersion: v1
kind: Service
metadata: {name: np-remote, namespace: smoke}
spec:
  type: NodePort
  clusterIP: 10.96.0.41
  clusterIPs: [10.96.0.41]
  externalTrafficPolicy: Cluster
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30081}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: np-remote-1
  namespace: smoke
  labels: {kubernetes.io/service-name: np-remote}
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
endpoints:
- addresses: [10.0.2.2]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: elsewhere
EOF

# Checks cip-client's output: $1 file, $2 expected reply prefix, $3 expected address, $4 count,
# $5 the JSON field holding the address ("peer" or "from").
client_ok() {
    [ "$(grep -c . "$1")" -eq "$4" ] || return 1
    [ "$(grep -F "\"reply\":\"$2" "$1" | grep -cF "\"$5\":\"$3\"")" -eq "$4" ]
}
# The first line of a client's output, for a FAIL detail.
first() { head -n 1 "$1" | cut -c1-300; }

# ---- probe -------------------------------------------------------------------------------------
clusterip-agent probe >/tmp/probe.out 2>&1
prc=$?
sed 's/^/probe| /' /tmp/probe.out
missing=$(awk '$1 == "missing" { printf "%s%s", sep, $2; sep = "," }' /tmp/probe.out)
if [ $prc -eq 0 ]; then
    result probe PASS "missing=${missing:-none}"
else
    result probe FAIL "exit $prc: $(tail -n 1 /tmp/probe.out | cut -c1-300) missing=${missing:-none}"
fi
if ! clusterip-agent probe --json >/tmp/probe.json 2>&1 || ! grep -q '"runnable": true' /tmp/probe.json; then
    result probe-json INFO "$(tr -d '\n' </tmp/probe.json | cut -c1-300)"
fi

# ---- topology: client netns cl (10.0.1.2) -- c0/c1 -- node -- b0/b1 -- backend netns be -------
$IP link add v0 type veth peer name v1 && $IP link set v0 up && $IP link set v1 up
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
[ $topo -eq 0 ] || result topology INFO "could not build the netns topology"
$IP netns exec be cip-backend --name be-1 --tcp 10.0.2.2:8080 --udp 10.0.2.2:5353 >/tmp/be1.log 2>&1 &

# ---- socket-level load balancing: client in cgroup cip, backend in netns be ------------------
mkdir -p /sys/fs/cgroup/cip
in_cgroup() {
    sh -c 'echo $$ > /sys/fs/cgroup/cip/cgroup.procs && exec "$@"' sh "$@"
}
started=$(date +%s)
: >/tmp/agent1.log
clusterip-agent run --manifests /tmp/manifests --cgroup /sys/fs/cgroup/cip \
    --bpffs /sys/fs/bpf/cip --node-name n >/tmp/agent1.log 2>&1 &
agent=$!
wait_synced /tmp/agent1.log $agent 60
rc=$?
took=$(($(date +%s) - started))
grep ' WARN ' /tmp/agent1.log | sed 's/^/agent1-warn| /'
if [ $rc -eq 0 ]; then
    in_cgroup cip-client tcp 10.96.0.10:80 --count 3 >/tmp/c-tcp.out 2>&1
    if client_ok /tmp/c-tcp.out "be-1 10.0.2.1" "10.96.0.10:80" 3 peer; then
        result socket-tcp PASS "3/3 connects to 10.96.0.10:80 answered by be-1 in netns be, getpeername = VIP (synced in ${took}s)"
    else
        result socket-tcp FAIL "client: $(first /tmp/c-tcp.out)"
    fi
    in_cgroup cip-client udp-unconnected 10.96.0.10:53 --count 2 >/tmp/c-udp.out 2>&1
    in_cgroup cip-client udp-connected 10.96.0.10:53 --count 2 >>/tmp/c-udp.out 2>&1
    if client_ok /tmp/c-udp.out "be-1 10.0.2.1 ping" "10.96.0.10:53" 4 from; then
        result socket-udp PASS "2 sendto + 2 connected sends to 10.96.0.10:53 answered by be-1, replies from the VIP"
    else
        result socket-udp FAIL "client: $(first /tmp/c-udp.out)"
    fi
    in_cgroup cip-client tcp 10.96.0.30:80 >/tmp/c-ref.out 2>&1
    if grep -q '"errno":111' /tmp/c-ref.out; then
        result refused PASS "connect to 10.96.0.30:80 (no endpoints): ECONNREFUSED"
    elif grep -q '"errno":1[,}]' /tmp/c-ref.out; then
        result refused DEGRADED "connect to 10.96.0.30:80 (no endpoints): EPERM, not ECONNREFUSED"
    else
        result refused FAIL "connect to 10.96.0.30:80 (no endpoints): $(first /tmp/c-ref.out)"
    fi
else
    if [ $rc -eq 1 ]; then
        reason="agent exited: $(why /tmp/agent1.log)"
    else
        reason="agent not synced after 60s: $(why /tmp/agent1.log)"
    fi
    for c in socket-tcp socket-udp refused; do result $c FAIL "$reason"; done
    dump_log /tmp/agent1.log agent1
fi
kill $agent 2>/dev/null
wait $agent 2>/dev/null
clusterip-agent cleanup --bpffs /sys/fs/bpf/cip >/dev/null 2>&1

# ---- per-packet: TC (tcx or netlink clsact), XDP, test runs, and traffic through TC -----------

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
    emode=$(attach_mode "$1" tc_egress v0)
    if [ -n "$mode" ] && [ "$emode" != "$mode" ]; then
        result tc FAIL "tc_ingress on v0: $mode, but tc_egress: $(attach_why "$1" tc_egress v0)"
        return
    fi
    case "$mode" in
    tcx) result tc PASS "tc_ingress and tc_egress on v0: $mode" ;;
    netlink*) result tc DEGRADED "tc_ingress and tc_egress on v0: $mode" ;;
    *) result tc FAIL "$(attach_why "$1" tc_ingress v0)" ;;
    esac
}
report_xdp() {
    mode=$(attach_mode "$1" xdp_ingress v1)
    if [ -n "$mode" ]; then
        result xdp PASS "xdp_ingress on v1: $mode"
    else
        result xdp FAIL "$(attach_why "$1" xdp_ingress v1)"
    fi
}

# BPF_PROG_TEST_RUN (bpftool prog run) of the agent's loaded program $2 on the frame
# /pkt/$3.bin, a TCP SYN 10.0.1.2 -> 10.96.0.10:80; check $1 passes when the program returns
# $4 and the frame comes out DNATed to 10.0.2.2:8080 (IPv4 destination at byte 30, port at 36).
test_run() {
    out=/tmp/$1.out
    rm -f "$out"
    ret=$(bpftool prog run name "$2" data_in "/pkt/$3.bin" data_out "$out" 2>&1)
    rv=$(echo "$ret" | sed -n 's/.*Return value: \(-\{0,1\}[0-9]*\).*/\1/p')
    dst=$(od -An -tu1 -j30 -N4 "$out" 2>/dev/null | tr -s ' ' | sed 's/^ //; s/ $//' | tr ' ' .)
    port=$(od -An -tu1 -j36 -N2 "$out" 2>/dev/null | awk '{ print $1 * 256 + $2 }')
    if [ "$rv" = "$4" ] && [ "$dst:$port" = "10.0.2.2:8080" ]; then
        result "$1" PASS "$2 on a TCP SYN to 10.96.0.10:80: returned $rv, frame rewritten to $dst:$port"
    else
        result "$1" FAIL "$2 on a TCP SYN to 10.96.0.10:80: returned ${rv:-?} (want $4), frame to $dst:$port; $(echo "$ret" | tr '\n' ' ' | cut -c1-200)"
    fi
}

run_packet_agent /tmp/agent2.log --tc-iface v0 --tc-iface c0 --tc-iface b0 --xdp-iface v1
grep ' WARN ' /tmp/agent2.log | sed 's/^/agent2-warn| /'
if [ $rc -eq 0 ]; then
    report_tc /tmp/agent2.log
    report_xdp /tmp/agent2.log
    # TC_ACT_OK (0) after a translation; xdp_ingress translates and returns XDP_PASS (2).
    test_run tc-testrun tc_ingress tcp-syn-a 0
    test_run xdp-testrun xdp_ingress tcp-syn-b 2
    if [ $topo -ne 0 ]; then
        result tc-tcp FAIL "could not build the netns topology"
        result tc-udp FAIL "could not build the netns topology"
    else
        $IP netns exec cl cip-client tcp 10.96.0.10:80 --count 3 >/tmp/c2-tcp.out 2>&1
        if client_ok /tmp/c2-tcp.out "be-1 10.0.1.2" "10.96.0.10:80" 3 peer; then
            result tc-tcp PASS "3/3 connects from netns cl to 10.96.0.10:80 DNATed to be-1, client IP kept"
        else
            result tc-tcp FAIL "client: $(first /tmp/c2-tcp.out)"
        fi
        $IP netns exec cl cip-client udp-connected 10.96.0.10:53 --count 3 >/tmp/c2-udp.out 2>&1
        if client_ok /tmp/c2-udp.out "be-1 10.0.1.2 ping" "10.96.0.10:53" 3 from; then
            result tc-udp PASS "3/3 datagrams from netns cl to 10.96.0.10:53 DNATed to be-1, replies from the VIP"
        else
            result tc-udp FAIL "client: $(first /tmp/c2-udp.out)"
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
    for c in tc-testrun xdp-testrun tc-tcp tc-udp; do
        result $c FAIL "not run: the per-packet agent did not start"
    done
fi

# ---- NodePort: tc_nodeport / tc_nodeport_egress on the node's interfaces -------------------
# The per-packet agents above leave their programs attached when they stop (TCX links are
# pinned): agent2's tc_ingress on c0 and b0 would translate first and end the TCX chain.
for d in agent2 agent-tc agent-xdp; do
    clusterip-agent cleanup --bpffs "/sys/fs/bpf/$d" >/dev/null 2>&1
done
if [ $topo -ne 0 ]; then
    for c in nodeport nodeport-local nodeport-snat; do result $c FAIL "could not build the netns topology"; done
    finish
fi
run_packet_agent /tmp/agent3.log --nodeport-iface c0 --nodeport-iface b0
echo 1 >/proc/sys/kernel/bpf_stats_enabled
grep ' WARN ' /tmp/agent3.log | sed 's/^/agent3-warn| /'
if [ $rc -eq 0 ]; then
    mode=$(attach_mode /tmp/agent3.log tc_nodeport c0)
    case "$mode" in
    tcx) result nodeport PASS "tc_nodeport and tc_nodeport_egress on c0 and b0: $mode" ;;
    netlink*) result nodeport DEGRADED "tc_nodeport and tc_nodeport_egress on c0 and b0: $mode" ;;
    *) result nodeport FAIL "$(attach_why /tmp/agent3.log tc_nodeport c0)" ;;
    esac
    $IP netns exec cl cip-client tcp 10.0.1.1:30080 --count 3 >/tmp/c3-local.out 2>&1
    if client_ok /tmp/c3-local.out "be-1 10.0.1.2" "10.0.1.1:30080" 3 peer; then
        result nodeport-local PASS "3/3 connects from netns cl to 10.0.1.1:30080 reached be-1 (local endpoint), client IP kept"
    else
        result nodeport-local FAIL "client: $(first /tmp/c3-local.out)"
    fi
    $IP netns exec cl cip-client tcp 10.0.1.1:30081 --count 3 >/tmp/c3-snat.out 2>&1
    if client_ok /tmp/c3-snat.out "be-1 10.0.1.1" "10.0.1.1:30081" 3 peer; then
        result nodeport-snat PASS "3/3 connects from netns cl to 10.0.1.1:30081 reached be-1 (endpoint elsewhere) from the node's address"
    else
        result nodeport-snat FAIL "client: $(first /tmp/c3-snat.out)"
    fi
    if ! grep -q '"reply"' /tmp/c3-local.out || ! grep -q '"reply"' /tmp/c3-snat.out; then
        # What the datapath holds and saw, for the log.
        clusterip-agent dump --bpffs /sys/fs/bpf/agent3 2>&1 | sed 's/^/agent3-dump| /'
        clusterip-agent dump --bpffs /sys/fs/bpf/agent3 --conntrack 2>&1 | sed 's/^/agent3-ct| /'
        $IP -s link show 2>&1 | sed 's/^/agent3-link| /'
        $IP neigh 2>&1 | sed 's/^/agent3-neigh| /'
        bpftool net show 2>&1 | sed 's/^/agent3-net| /'
        bpftool prog show 2>&1 | grep -A1 nodeport | sed 's/^/agent3-prog| /'
        dump_log /tmp/agent3.log agent3
    fi
else
    reason="agent: $(why /tmp/agent3.log)"
    dump_log /tmp/agent3.log agent3
    for c in nodeport nodeport-local nodeport-snat; do result $c FAIL "$reason"; done
fi
kill $agent 2>/dev/null
wait $agent 2>/dev/null

finish
