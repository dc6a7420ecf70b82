#!/usr/bin/env bash
# Plots the gateway benchmarks' CSV results as PNG, with gnuplot (installed from the
# distribution's packages if missing, as deploy/ does for its tools):
#   PLOTS_DIR/latency-cdf.png  publish→receive latency CDF of every fan-out run and rate
#                              (RESULTS_DIR/fanout-cdf-<connections>-<rate>.csv, from `fanout`)
#   PLOTS_DIR/floor.png        the gateway at 10 events/s against a bare write loop to the same
#                              clients (RESULTS_DIR/floor-cdf-<connections>-<threads>.csv,
#                              from `write-floor`)
#   PLOTS_DIR/memory.png       gateway memory against idle connections
#                              (RESULTS_DIR/idle-memory.csv, from `idle-memory`)
# usage: bench/plot.sh [RESULTS_DIR] [PLOTS_DIR]
#   defaults: target/bench-results (where the benchmarks write) and docs/plots
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
results=${1:-target/bench-results} plots=${2:-docs/plots}
ensure_commands gnuplot:gnuplot-nox
mkdir -p "$plots"
made=0

common='set terminal pngcairo size 1000,650 font ",11"
set datafile separator ","
set grid
set key left top'

# Draws the latency CDF curves in "${curves[@]}" (gnuplot plot clauses) as $1, titled $2, with
# the legend at $3.
plot_cdfs() {
    gnuplot <<EOF
$common
set output '$1'
set title '$2'
set logscale x
set xlabel 'publish → receive latency (ms, log scale)'
set ylabel 'fraction of deliveries at or below'
set yrange [0:1]
set key $3
plot $(IFS=,; echo "${curves[*]}")
EOF
    say "wrote $1 (${#curves[@]} curves)"
    made=$((made + 1))
}

# One curve per fan-out run and rate, ordered by connections then rate.
mapfile -t cdfs < <(find "$results" -maxdepth 1 -name 'fanout-cdf-*-*.csv' 2>/dev/null |
    sed -E 's/.*fanout-cdf-([0-9]+)-([0-9.]+)\.csv$/\1 \2 &/' | sort -k1,1n -k2,2g |
    cut -d' ' -f3-)
if [ ${#cdfs[@]} -gt 0 ]; then
    curves=()
    for f in "${cdfs[@]}"; do
        name=${f##*/fanout-cdf-}
        name=${name%.csv}
        # Solid for one connection count, dashed for the next: colours repeat after eight.
        [ "${name%%-*}" = "${first:=${name%%-*}}" ] && dash=1 || dash=2
        curves+=("'$f' skip 1 using 1:2 with lines lw 2 dt $dash title '${name%%-*} connections, ${name#*-} events/s'")
    done
    plot_cdfs "$plots/latency-cdf.png" \
        'Gateway fan-out on one stream: publish → receive latency' 'right bottom'
else
    warn "no $results/fanout-cdf-*.csv: run target/release/fanout first"
fi

# The gateway's 10 events/s curve next to the write loop's, per connection count.
curves=()
for n in 1000 10000; do
    gateway=$results/fanout-cdf-$n-10.csv
    [ -s "$gateway" ] && curves+=("'$gateway' skip 1 using 1:2 with lines lw 2 title 'gateway, $n connections'")
    for threads in 1 2; do
        loop=$results/floor-cdf-$n-$threads.csv
        [ -s "$loop" ] && curves+=("'$loop' skip 1 using 1:2 with lines lw 2 dt 2 title 'bare write loop, $threads thread(s), $n connections'")
    done
done
if [ ${#curves[@]} -gt 0 ]; then
    plot_cdfs "$plots/floor.png" \
        '10 events/s: the gateway against a bare write loop to the same clients' 'left top'
else
    warn "no $results/floor-cdf-*.csv: run target/release/write-floor first"
fi

memory=$results/idle-memory.csv
if [ -s "$memory" ]; then
    gnuplot <<EOF
$common
set output '$plots/memory.png'
set title 'Gateway memory against idle SSE connections'
set key right bottom
set xlabel 'idle connections held'
set ylabel 'gateway RSS (MiB)'
set y2label 'KiB per connection'
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set xrange [0:*]
plot '$memory' skip 1 using 2:(\$3/1024) with linespoints lw 2 pt 7 title 'gateway RSS', \
     '$memory' skip 1 using 2:4 axes x1y2 with linespoints lw 2 pt 5 title 'growth over baseline per connection (right axis)', \
     4 axes x1y2 with lines dt 2 lc 'gray' title 'target: 4 KiB per connection at 19,000 (right axis)'
EOF
    say "wrote $plots/memory.png"
    made=$((made + 1))
else
    warn "no $memory: run target/release/idle-memory first"
fi
[ "$made" -gt 0 ] || die "nothing to plot in $results"
