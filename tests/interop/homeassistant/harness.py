#!/usr/bin/env python3
"""A real Home Assistant core for voxgate's tests: configured, onboarded and driven from stdin.

    harness.py DIR

Writes a configuration into DIR (HTTP on 127.0.0.1 and a free port; the Assist pipeline with the probe's
speech-to-text engine from custom_components/voxgate_probe, Home Assistant's default conversation agent and
the probe's text-to-speech), starts `hass`, onboards a user without a browser, creates a long-lived access token
and a pipeline made preferred, then prints one JSON line:

    {"url": "ws://127.0.0.1:PORT/api/websocket", "token": "…", "pipeline": "<id>", "records": "DIR/records",
     "log": "DIR/home-assistant.log", "version": "2024.3.3"}

Then it reads commands from stdin, one per line, and answers each with one line:
    stop      stops Home Assistant (SIGTERM, then waits for it)     → "stopped"
    start     starts it again with the same configuration            → "ready"
    kill      kills it at once (SIGKILL)                             → "stopped"
End of stdin stops Home Assistant and ends the harness.
"""
import asyncio
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(base, port):
    records = os.path.join(base, "records")
    os.makedirs(records, exist_ok=True)
    shutil.copytree(os.path.join(HERE, "custom_components"), os.path.join(base, "custom_components"), dirs_exist_ok=True)
    with open(os.path.join(base, "configuration.yaml"), "w") as f:
        f.write(f"""homeassistant:
  name: voxgate test
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: NL
  currency: EUR
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
onboarding:
websocket_api:
assist_pipeline:
conversation:
media_source:
voxgate_probe:
  record_dir: {records}
logger:
  default: warning
  logs:
    homeassistant.bootstrap: info
""")
    return records


class Hass:
    def __init__(self, base, port):
        self.base, self.port, self.proc = base, port, None
        self.log = os.path.join(base, "home-assistant.log")

    def start(self):
        hass = os.path.join(os.path.dirname(sys.executable), "hass")
        self.proc = subprocess.Popen([hass, "--skip-pip", "-c", self.base, "--log-file", self.log],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=die_with_parent)
        # Ready at bootstrap's "Home Assistant initialized" line; the rest of its output is drained and dropped.
        for line in self.proc.stderr:
            if "Home Assistant initialized" in line:
                threading.Thread(target=lambda out: [None for _ in out], args=(self.proc.stderr,), daemon=True).start()
                return
        self.proc.wait()
        raise SystemExit(f"hass exited with {self.proc.returncode} before it was ready; see {self.log}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait()
        self.proc = None


async def onboard(port):
    """A user, an access token, a long-lived token, and a preferred pipeline of our engines."""
    base = f"http://127.0.0.1:{port}"
    client_id = base + "/"
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "/api/onboarding/users", json={
                "client_id": client_id, "name": "Test", "username": "test", "password": "test-pass-1234",
                "language": "en"}) as r:
            r.raise_for_status()
            code = (await r.json())["auth_code"]
        async with http.post(base + "/auth/token", data={
                "grant_type": "authorization_code", "code": code, "client_id": client_id}) as r:
            r.raise_for_status()
            access = (await r.json())["access_token"]
        async with http.ws_connect(base + "/api/websocket") as ws:
            first = await ws.receive_json()
            assert first["type"] == "auth_required", first
            await ws.send_json({"type": "auth", "access_token": access})
            ok = await ws.receive_json()
            assert ok["type"] == "auth_ok", ok
            ids = iter(range(1, 100))

            async def call(msg):
                msg["id"] = next(ids)
                await ws.send_json(msg)
                while True:
                    reply = await ws.receive_json()
                    if reply.get("id") == msg["id"] and reply["type"] == "result":
                        if not reply["success"]:
                            raise SystemExit(f"{msg['type']} failed: {reply}")
                        return reply["result"]

            token = await call({"type": "auth/long_lived_access_token", "client_name": f"voxgate-test-{os.getpid()}",
                                "lifespan": 365})
            pipeline = await call({"type": "assist_pipeline/pipeline/create", "name": "voxgate test",
                                   "language": "en", "conversation_engine": "homeassistant",
                                   "conversation_language": "en", "stt_engine": "voxgate_probe", "stt_language": "en",
                                   "tts_engine": "voxgate_probe", "tts_language": "en", "tts_voice": None,
                                   "wake_word_entity": None, "wake_word_id": None})
            await call({"type": "assist_pipeline/pipeline/set_preferred", "pipeline_id": pipeline["id"]})
            return token, pipeline["id"], ok["ha_version"]


def die_with_parent():
    """In the child, before hass starts: it is killed when this harness ends, however it ends (the tests kill the
    harness with SIGKILL, which leaves it no time to stop hass)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def main():
    base = os.path.abspath(sys.argv[1])
    os.makedirs(base, exist_ok=True)
    port = free_port()
    records = write_config(base, port)
    hass = Hass(base, port)
    signal.signal(signal.SIGTERM, lambda *_: (hass.stop(), sys.exit(0)))
    try:
        hass.start()
        token, pipeline, version = asyncio.run(onboard(port))
        print(json.dumps({"url": f"ws://127.0.0.1:{port}/api/websocket", "token": token, "pipeline": pipeline,
                          "records": records, "log": hass.log, "version": version, "port": port}), flush=True)
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "stop":
                hass.stop()
                print("stopped", flush=True)
            elif cmd == "kill":
                hass.stop(signal.SIGKILL)
                print("stopped", flush=True)
            elif cmd == "start":
                hass.start()
                print("ready", flush=True)
            else:
                print(f"unknown command {cmd!r}", flush=True)
    finally:
        hass.stop()


if __name__ == "__main__":
    main()
