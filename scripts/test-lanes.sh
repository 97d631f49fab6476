#!/usr/bin/env bash
# `make test`'s database lanes side by side: `scripts/test-lanes.sh sqlite postgres` runs
# `make test-sqlite` and `make test-postgres` at the same time, each writing its whole output to
# var/test-<lane>.log. A lane's pytest process keeps one core busy; run one after the other, the
# two lanes left the second core of a 2-core CI host mostly idle.
# While they run, a progress line every minute; at the end each lane's result (pytest's closing
# summary), and the whole log of a lane that failed. Exits non-zero when any lane failed.
set -u

MAKE="${MAKE:-make}"
PROGRESS_SECONDS="${PROGRESS_SECONDS:-60}"
[ $# -gt 0 ] || { echo "usage: $0 LANE... (sqlite, postgres)" >&2; exit 2; }
mkdir -p var

declare -A pid started rc elapsed
for lane in "$@"; do
    log="var/test-$lane.log"
    # Its own session: on Ctrl-C or a cancelled CI job the whole lane (pytest, its gunicorn servers,
    # private PostgreSQL clusters) is stopped by its process group.
    setsid -w "$MAKE" --no-print-directory "test-$lane" >"$log" 2>&1 </dev/null &
    pid[$lane]=$!
    started[$lane]=$SECONDS
    echo "$lane lane: started, output in $log"
done

stop_lanes() {
    for lane in "${!pid[@]}"; do kill -TERM -- "-${pid[$lane]}" 2>/dev/null; done
    wait
    exit 130
}
trap stop_lanes INT TERM

# pytest -q prints "[ NN%]" at the end of each line of dots: the last one is the lane's progress.
progress() {
    grep -o '\[ *[0-9]*%\]' "var/test-$1.log" 2>/dev/null | tail -n 1 | tr -d '[] '
}

running=$#
next_report=$((SECONDS + PROGRESS_SECONDS))
while [ "$running" -gt 0 ]; do
    sleep 1
    running=0
    for lane in "$@"; do
        [ -z "${rc[$lane]:-}" ] || continue
        if kill -0 "${pid[$lane]}" 2>/dev/null; then
            running=$((running + 1))
        else
            wait "${pid[$lane]}"
            rc[$lane]=$?
            elapsed[$lane]=$((SECONDS - started[$lane]))
        fi
    done
    if [ "$running" -gt 0 ] && [ "$SECONDS" -ge "$next_report" ]; then
        line="$(date +%H:%M:%S)"
        for lane in "$@"; do
            if [ -n "${rc[$lane]:-}" ]; then state="done"; else state="$(progress "$lane")"; fi
            line="$line  $lane: ${state:-starting}"
        done
        echo "$line"
        next_report=$((SECONDS + PROGRESS_SECONDS))
    fi
done

failed=0
for lane in "$@"; do
    log="var/test-$lane.log"
    minutes="$(printf '%d:%02d' $((elapsed[$lane] / 60)) $((elapsed[$lane] % 60)))"
    if [ "${rc[$lane]}" -eq 0 ]; then
        echo "===== $lane lane: passed in $minutes (whole output: $log) ====="
        # The suite's own closing report (hostile-input tally, leak check, pass counts).
        sed -n '/hostile input and leak check/,$p' "$log"
    else
        failed=1
        echo "===== $lane lane: FAILED (exit ${rc[$lane]}) in $minutes; its whole output ($log): ====="
        cat "$log"
        echo "===== end of $lane lane: FAILED ====="
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "Failed lanes:$(for lane in "$@"; do [ "${rc[$lane]}" -eq 0 ] || printf ' %s' "$lane"; done)" >&2
fi
exit "$failed"
