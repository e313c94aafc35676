#!/usr/bin/env python3
"""CPU of the whole daemon while it plays an answer, against the same time idle.

    scripts/playback-cpu.py VOXGATE_BINARY [SECONDS]

Runs `voxgate run` on stdin (manual mode, quiet audio written at real time) with playback through ALSA's file
plugin into a FIFO that this script reads at real time (16 kHz mono 16-bit: the device then plays at real
time), measures the daemon's CPU time (/proc/PID/stat) over SECONDS (default 10) idle, then over SECONDS while
`voxgate say` plays a tone of that length, and prints both as a percentage of one core.
"""
import math
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave

binary = os.path.abspath(sys.argv[1])
seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
work = tempfile.mkdtemp(prefix="voxgate-playback-cpu-")
fifo = os.path.join(work, "speaker.fifo")
os.mkfifo(fifo)
with open(os.path.join(work, "asound.conf"), "w") as f:
    f.write(f'pcm.fakespk {{\n type file\n slave.pcm {{ type null }}\n file "{fifo}"\n format "raw"\n'
            f' hint {{ show on description "fake speaker" }}\n}}\n')
tone = os.path.join(work, "tone.wav")
with wave.open(tone, "wb") as w:
    w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    w.writeframes(b"".join(struct.pack("<h", int(6000 * math.sin(i * 0.07))) for i in range(16000 * seconds)))
sock = os.path.join(work, "control.sock")
with open(os.path.join(work, "voxgate.toml"), "w") as f:
    f.write(f'[audio]\nsource = "stdin"\n[wake]\nmode = "manual"\n[session]\nurl = "ws://127.0.0.1:9/"\n'
            f'[playback]\ndevice = "alsa:fakespk"\n[control]\nsocket = "{sock}"\n[log]\nformat = "text"\n')
env = {**os.environ, "ALSA_CONFIG_PATH": os.path.join(work, "asound.conf")}
daemon = subprocess.Popen([binary, "run", "--config", os.path.join(work, "voxgate.toml")], stdin=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=False, env=env)
stop = threading.Event()


def feed():
    # 20 ms of quiet audio every 20 ms, as a microphone would.
    start, n = time.monotonic(), 0
    while not stop.is_set():
        n += 1
        time.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
        daemon.stdin.write(b"\x01\x00" * 320)
        daemon.stdin.flush()


def drain():
    # The device's clock: 32000 bytes a second.
    fd = os.open(fifo, os.O_RDWR)
    start, got = time.monotonic(), 0
    while not stop.is_set():
        got += len(os.read(fd, 640))
        time.sleep(max(0.0, start + got / 32000 - time.monotonic()))


def cpu():
    fields = open(f"/proc/{daemon.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


threading.Thread(target=feed, daemon=True).start()
threading.Thread(target=drain, daemon=True).start()
# Ready once it says where its control socket is; the rest of its log is read and dropped.
for line in daemon.stderr:
    if b"control socket at" in line:
        break
threading.Thread(target=lambda: [None for _ in daemon.stderr], daemon=True).start()
time.sleep(2)  # settling, before the measured windows
c0, t0 = cpu(), time.monotonic()
time.sleep(seconds)
idle = (cpu() - c0) / (time.monotonic() - t0) * 100
c0, t0 = cpu(), time.monotonic()
subprocess.run([binary, "say", tone, "--socket", sock], check=True, stdout=subprocess.DEVNULL)
time.sleep(seconds)
playing = (cpu() - c0) / (time.monotonic() - t0) * 100
print(f"whole daemon, {seconds} s idle: {idle:.2f} % of a core; {seconds} s playing: {playing:.2f} % of a core")
stop.set()
daemon.terminate()
daemon.wait()
