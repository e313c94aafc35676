#!/usr/bin/env python3
"""Wake word → first audio at Home Assistant, and each frame's latency to it, at real time; and the sounds:
wake word → first sample of the wake chime at the device, tts-end → first sample of the answer at the device.

    bench.py VOXGATE_BINARY [CYCLES]

Starts a real Home Assistant core (harness.py), then `voxgate run` on stdin with session.protocol =
"homeassistant", and writes to its stdin at real time: CYCLES times (default 9) the first 8 s of a bundled
stream (wake word "hey jarvis", a command, quiet), so that each cycle is one pipeline run (Home Assistant
ignores a second wake-up of the same phrase within 2 s). Every frame carries its own number in the lowest
bit of its first 24 samples, so a chunk Home Assistant read tells which frame it is. Home Assistant's probe
notes when the pipeline read each chunk; the daemon's log gives when it detected each wake word. Both clocks
are this machine's wall clock. The daemon plays through ALSA's file plugin into /dev/null (a device with no
clock of its own), and logs when the first sample of each sound went to it. Prints one line per run and a
summary.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
FRAME = 320  # samples: 20 ms at 16 kHz
SEQ_BITS = 24
CYCLE_S = 8


def stamp(samples, seq):
    for i in range(SEQ_BITS):
        samples[i] = (samples[i] & ~1) | ((seq >> i) & 1)


def stamped(chunk):
    return sum((chunk[2 * i] & 1) << i for i in range(SEQ_BITS))


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    binary = os.path.abspath(sys.argv[1])
    cycles = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    with wave.open(os.path.join(ROOT, "tests/fixtures/wake/stream-en-us_m1.wav")) as w:
        import array
        source = array.array("h")
        source.frombytes(w.readframes(w.getnframes()))
    cycle = source[: CYCLE_S * 16000]
    work = tempfile.mkdtemp(prefix="voxgate-ha-bench-")
    harness = subprocess.Popen([sys.executable, os.path.join(HERE, "harness.py"), os.path.join(work, "ha")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = json.loads(harness.stdout.readline())
    token = os.path.join(work, "token")
    with open(token, "w") as f:
        f.write(ready["token"] + "\n")
    alsa = os.path.join(work, "asound.conf")
    with open(alsa, "w") as f:
        f.write('pcm.fakespk {\n type file\n slave.pcm { type null }\n file "/dev/null"\n format "raw"\n'
                ' hint { show on description "fake speaker" }\n}\n')
    config = os.path.join(work, "voxgate.toml")
    with open(config, "w") as f:
        f.write(f"""[audio]
source = "stdin"
[session]
url = "{ready['url']}"
protocol = "homeassistant"
token_file = "{token}"
drain_timeout_ms = 10000
[playback]
device = "alsa:fakespk"
[control]
socket = ""
[log]
format = "text"
""")
    daemon = subprocess.Popen([binary, "run", "--config", config], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=False, env={**os.environ, "NO_COLOR": "1", "ALSA_CONFIG_PATH": alsa})
    log = []
    reader = threading.Thread(target=lambda: log.extend(daemon.stderr), daemon=True)
    reader.start()
    written = {}
    seq = 0
    start = time.monotonic()
    # Real time: each frame is written when its 20 ms are over, like a microphone delivering it.
    for _ in range(cycles):
        for at in range(0, len(cycle), FRAME):
            frame = cycle[at:at + FRAME]
            stamp(frame, seq)
            due = start + (seq + 1) * 0.02
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            daemon.stdin.write(frame.tobytes())
            daemon.stdin.flush()
            written[seq] = time.time()
            seq += 1
    daemon.stdin.close()
    daemon.wait()
    reader.join()
    harness.stdin.close()
    harness.wait()

    wakes, chimes, tts_ends, answers = [], [], [], []
    first_in = re.compile(r"first sample in (\d+) ms")
    for raw in log:
        line = raw.decode(errors="replace")
        if not line[:4].isdigit():
            continue
        ts = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        if "event=\"wake\"" in line:
            wakes.append(ts)
        elif "ha_event=\"tts-end\"" in line:
            tts_ends.append(ts)
        elif "event=\"playback_start\"" in line:
            at = ts + int(first_in.search(line).group(1)) / 1000
            (chimes if "wake chime" in line else answers if "kind=\"answer\"" in line else []).append(at)
    records = ready["records"]
    runs = sorted(int(m.group(1)) for f in os.listdir(records) if (m := re.match(r"run-(\d+)\.pcm$", f)))
    first_audio, live = [], []
    for n, wake in zip(runs, wakes):
        with open(os.path.join(records, f"run-{n}.pcm"), "rb") as f:
            pcm = f.read()
        with open(os.path.join(records, f"run-{n}.times")) as f:
            times = [float(t) for t in f]
        chunks = [pcm[i:i + 2 * FRAME] for i in range(0, len(pcm), 2 * FRAME)]
        to_first = (times[0] - wake) * 1000
        first_audio.append(to_first)
        lat = [(t - written[stamped(c)]) * 1000 for c, t in zip(chunks, times) if written.get(stamped(c), 0) > wake]
        live += lat
        p50 = f"{statistics.median(lat):.2f}" if lat else "-"
        print(f"run {n}: wake → first audio read by Home Assistant {to_first:.1f} ms; {len(chunks)} frames read, "
              f"{len(lat)} live, latency p50 {p50} ms")
    if len(wakes) != len(runs):
        print(f"warning: {len(wakes)} wake words, {len(runs)} runs")
    later = first_audio[1:]
    print(f"first run after start: {first_audio[0]:.1f} ms; later runs: p50 {statistics.median(later):.1f} ms, "
          f"max {max(later):.1f} ms")
    print(f"live frames, write → read by Home Assistant: n={len(live)} p50 {pct(live, 50):.2f} ms, "
          f"p99 {pct(live, 99):.2f} ms, max {max(live):.2f} ms")
    chime = [(c - w) * 1000 for w, c in zip(wakes, chimes)]
    answer = [(a - t) * 1000 for t, a in zip(tts_ends, answers)]
    if chime:
        print(f"wake word → first sample of the wake chime at the device: n={len(chime)} p50 {pct(chime, 50):.1f} ms, "
              f"max {max(chime):.1f} ms")
    if answer:
        print(f"tts-end → first sample of the answer at the device (fetched from Home Assistant, MP3 decoded): "
              f"n={len(answer)} p50 {pct(answer, 50):.1f} ms, max {max(answer):.1f} ms")


if __name__ == "__main__":
    main()
