#!/usr/bin/env bash
# Load a real lb director with the kernel's packet generator (pktgen).
#
# Run it as root on a separate *generator* host whose NIC is cabled (or
# switched) to the director's NIC. It sends 64-byte UDP datagrams to the VIP,
# one pktgen kernel thread per CPU, each on its own TX queue, then prints
# what every thread sent. Read the director's forwarding rate with
# `lb stats` there (see docs/performance.md, "Load a real director with pktgen").
#
# pktgen only builds UDP. Load a UDP service (same VIP and port, protocol
# "udp" in lb.toml) with it: the data path does the same work for it as for
# TCP, except the TCP state machine. A tuple lb has not seen is a new flow
# (connection-table miss, wlc, insert: what a SYN costs), a tuple it has
# seen is an established flow (table hit).
#   --mode new          every packet a new 5-tuple: the source port and
#                       address walk ranges whose product is far larger than
#                       the connection table, so a tuple comes back only
#                       long after the LRU table evicted it
#   --mode established  a fixed set of --flows tuples, sent round-robin
#                       (after the first pass, every packet is a table hit)
set -euo pipefail

PGDIR=/proc/net/pktgen

usage() {
    cat <<'EOF'
Usage: bench/pktgen.sh --dev IFACE --dst-mac MAC --vip ADDR [options]

Sends UDP load to an lb director with the kernel's pktgen (root; run it on a
generator host, not on the director). Needs CONFIG_NET_PKTGEN (the pktgen
module, or built in).

Required:
  --dev IFACE          generator NIC that reaches the director
  --dst-mac MAC        MAC of the director's NIC (the VIP's next hop)
  --vip ADDR           the virtual IPv4 address (a UDP service in lb.toml)

Options:
  --port N             the service's UDP port                     (default 2811)
  --mode MODE          new | established                          (default new)
                         new: a new 5-tuple in every packet (SYN-like cost)
                         established: --flows tuples round-robin (table hits)
  --flows N            distinct flows in established mode          (default 10000)
  --src-min ADDR       lowest client source address      (default 198.18.0.1)
  --src-max ADDR       highest client source address     (default 198.19.255.254)
                         (RFC 2544 benchmarking range; the real servers
                         answer these addresses: route them to a sink)
  --threads N          pktgen threads, one per CPU and TX queue   (default: CPUs)
  --rate PPS           total packets per second, 0 = as fast as possible
                                                                   (default 0)
  --duration SEC       how long to send                            (default 10)
  --size BYTES         frame size without FCS, 60 to 1514          (default 60)
  --burst N            packets per driver call (xmit_more)         (default 32)
  -h, --help           this text

Example (director NIC 3c:fd:fe:00:00:01, VIP 192.0.2.200:2811/UDP):
  bench/pktgen.sh --dev eth1 --dst-mac 3c:fd:fe:00:00:01 --vip 192.0.2.200 \
      --mode new --duration 30
Then, on the director: `lb stats` twice, a known time apart (InPkts delta
over the time between them is the forwarding rate).
EOF
}

die() {
    echo "pktgen.sh: $*" >&2
    exit 2
}

dev="" dst_mac="" vip="" port=2811 mode=new flows=10000
src_min=198.18.0.1 src_max=198.19.255.254
threads="$(nproc)" rate=0 duration=10 size=60 burst=32

while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dev | --dst-mac | --vip | --port | --mode | --flows | --src-min | --src-max | \
            --threads | --rate | --duration | --size | --burst)
            [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
            opt="${1#--}"
            declare "${opt//-/_}=$2"
            shift 2
            ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# Without pktgen there is nothing to do: say so before anything else.
if [[ ! -d $PGDIR ]] && ! modprobe pktgen 2>/dev/null; then
    die "kernel pktgen is not available: $PGDIR is missing and 'modprobe pktgen' failed
(this kernel was built without CONFIG_NET_PKTGEN, or its modules are not
installed). Use a generator host whose kernel has pktgen, or measure on one
machine with the live benchmark of 'cargo xtask bench' (BPF_PROG_TEST_RUN live frames)."
fi
[[ -d $PGDIR ]] || die "modprobe pktgen succeeded but $PGDIR is missing"
[[ $EUID -eq 0 ]] || die "must run as root (pktgen is configured through $PGDIR)"

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_ipv4() { [[ $1 =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]]; }
[[ -n $dev ]] || die "--dev is required (see --help)"
[[ -e /sys/class/net/$dev ]] || die "no network interface $dev"
[[ $dst_mac =~ ^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$ ]] || die "--dst-mac: give the director NIC's MAC, e.g. 3c:fd:fe:00:00:01"
is_ipv4 "$vip" || die "--vip: an IPv4 address is required (pktgen here sends IPv4)"
is_ipv4 "$src_min" && is_ipv4 "$src_max" || die "--src-min/--src-max must be IPv4 addresses"
[[ $mode == new || $mode == established ]] || die "--mode: new or established"
for v in port flows threads rate duration size burst; do
    is_uint "${!v}" || die "--$v: a non-negative integer is required"
done
((port >= 1 && port <= 65535)) || die "--port: 1 to 65535"
((threads >= 1 && threads <= $(nproc))) || die "--threads: 1 to $(nproc) (one pktgen thread per CPU)"
((flows >= threads)) || die "--flows: at least one per thread ($threads)"
((size >= 60 && size <= 1514)) || die "--size: 60 to 1514"
((duration >= 1)) || die "--duration: at least 1 second"
((burst >= 1)) || die "--burst: at least 1"
txq="$(ls -d /sys/class/net/"$dev"/queues/tx-* | wc -l)"
((threads <= txq)) || echo "pktgen.sh: $dev has $txq TX queues for $threads threads; threads will share queues" >&2

# pgset FILE CMD: writes a pktgen command and checks its result line.
pgset() {
    echo "$2" >"$1"
    if ! grep -q '^Result: OK' "$1"; then
        die "pktgen rejected '$2' in $1: $(grep '^Result' "$1" || true)"
    fi
}

# Source ports walk [udp_src_min, udp_src_max) (pktgen's upper bound is
# exclusive) and source addresses walk [src_min, src_max], both advancing by
# one per packet. The threads get disjoint port ranges, so they never send
# the same tuple. In new mode a thread's port range has an odd length and the
# address range length is made a power of two, so the pair repeats only after
# (ports x addresses) packets.
ports_total=$((65535 - 1024))
per_thread=$((ports_total / threads))
ip2int() { local IFS=.; set -- $1; echo $(((($1 * 256 + $2) * 256 + $3) * 256 + $4)); }
int2ip() { echo "$(($1 >> 24 & 255)).$(($1 >> 16 & 255)).$(($1 >> 8 & 255)).$(($1 & 255))"; }
lo="$(ip2int "$src_min")" hi="$(ip2int "$src_max")"
((hi >= lo)) || die "--src-max is below --src-min"

echo reset >"$PGDIR/pgctrl"
stop() { echo stop >"$PGDIR/pgctrl" 2>/dev/null || true; }
trap stop EXIT

for ((t = 0; t < threads; t++)); do
    pgset "$PGDIR/kpktgend_$t" rem_device_all
    pgset "$PGDIR/kpktgend_$t" "add_device $dev@$t"
    f="$PGDIR/$dev@$t"
    pgset "$f" "count 0"
    pgset "$f" "clone_skb 0"
    pgset "$f" "burst $burst"
    pgset "$f" "pkt_size $size" # without the 4-byte FCS: 60 is 64 on the wire
    pgset "$f" "queue_map_min $((t % txq))"
    pgset "$f" "queue_map_max $((t % txq))"
    pgset "$f" "dst_mac $dst_mac"
    pgset "$f" "dst $vip"
    pgset "$f" "udp_dst_min $port"
    pgset "$f" "udp_dst_max $port"
    if ((rate > 0)); then
        pgset "$f" "ratep $(((rate + threads - 1) / threads))"
    fi
    if [[ $mode == new ]]; then
        n=$((per_thread % 2 ? per_thread : per_thread - 1))
        span=1
        while ((span * 2 <= hi - lo + 1)); do span=$((span * 2)); done
        first=$((1024 + t * per_thread))
        pgset "$f" "udp_src_min $first"
        pgset "$f" "udp_src_max $((first + n))"
        pgset "$f" "src_min $(int2ip "$lo")"
        pgset "$f" "src_max $(int2ip $((lo + span - 1)))"
    else
        # This thread's share of --flows: one source address of its own,
        # consecutive source ports.
        share=$(((flows + threads - 1) / threads))
        ((lo + t <= hi)) || die "--src-min/--src-max: one address per thread is needed"
        ((share <= ports_total)) || die "--flows: at most $((ports_total * threads)) with $threads threads"
        pgset "$f" "udp_src_min 1024"
        pgset "$f" "udp_src_max $((1024 + share))"
        pgset "$f" "src_min $(int2ip $((lo + t)))"
        pgset "$f" "src_max $(int2ip $((lo + t)))"
    fi
done

echo "pktgen.sh: $threads thread(s) on $dev -> $vip:$port/udp ($dst_mac), mode $mode," \
    "rate ${rate:-0} pps (0 = max), ${duration}s"
echo start >"$PGDIR/pgctrl" &
starter=$!
sleep "$duration"
stop
wait "$starter" || true
trap - EXIT

total=0
for ((t = 0; t < threads; t++)); do
    f="$PGDIR/$dev@$t"
    line="$(grep -A2 '^Result' "$f" | tr -s ' \n' ' ')"
    echo "thread $t: $line"
    sent="$(sed -n 's/.*pkts-sofar: \([0-9]*\).*/\1/p' "$f")"
    total=$((total + ${sent:-0}))
done
echo "pktgen.sh: sent $total packets in ${duration}s ($((total / duration)) pps); compare with lb stats InPkts on the director"
