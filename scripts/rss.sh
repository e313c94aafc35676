#!/bin/bash
# Resident memory of `voxgate run` listening on stdin (docs/BENCHMARKS.md).
#   scripts/rss.sh [BINARY] idle     Rss once audio flows (READY), with nothing heard yet
#   scripts/rss.sh [BINARY] speech   Rss after 250 s of the fixture speech, fed at real time
# The sessions it opens go to a closed port and fail; that is part of what is measured.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$here/target/release/voxgate}
what=${2:-idle}
[ -x "$bin" ] || { echo "rss.sh: $bin is not built (make release)" >&2; exit 1; }
case $what in idle | speech) ;; *) echo "rss.sh: idle or speech, not $what" >&2; exit 2 ;; esac

dir=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$dir"' EXIT
mkfifo "$dir/in"
: >"$dir/log"
VOXGATE_AUDIO__SOURCE=stdin VOXGATE_CONTROL__SOCKET="" VOXGATE_SESSION__URL=ws://127.0.0.1:9/ VOXGATE_LOG__LEVEL=debug \
    "$bin" run <"$dir/in" >"$dir/log" 2>&1 &
pid=$!

python3 - "$dir/in" "$dir/log" "$pid" "$what" "$here"/tests/fixtures/wake/stream-*.wav <<'PY'
import sys, time, wave
fifo, log, pid, what, wavs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
speech = b"".join(wave.open(w).readframes(1 << 30) for w in sorted(wavs))
frame = 640  # 20 ms of s16le mono at 16 kHz
out = open(fifo, "wb", buffering=0)

def rss():
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(l.split()[1] for l in f if l.startswith("Rss:"))

def feed(seconds):
    """Writes `seconds` of speech, paced by the clock as a microphone would deliver it."""
    start, sent, total = time.monotonic(), 0, int(seconds * 32000)
    while sent < total:
        at = sent % len(speech)
        chunk = speech[at:at + frame]
        out.write(chunk)
        sent += len(chunk)
        ahead = start + sent / 32000 - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)  # pacing the feed to real time, not waiting for an event

# READY: the daemon logs it (at debug) when the first frame arrives. Feed silence until it does.
ready = False
while not ready:
    out.write(bytes(frame))
    with open(log) as f:
        ready = "audio flows" in f.read()
    if not ready:
        time.sleep(0.02)  # pacing the feed to real time
if what == "speech":
    feed(250)
print(f"voxgate run, {what}: Rss {rss()} kB")
PY
