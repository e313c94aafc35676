"""A test probe for voxgate's Home Assistant tests.

It records, for every Assist pipeline run, the exact bytes the pipeline reads from the client's audio stream
(before Home Assistant's own audio processing changes them) into RECORD_DIR/run-N.pcm, with the time each
chunk was read (seconds since the epoch, one line per chunk) in RECORD_DIR/run-N.times, and provides a
speech-to-text engine (stt.py) whose transcript names that run: "probe run N", and a text-to-speech engine
(tts.py) that answers with the MP3 Home Assistant's demo ships. Both are loaded by discovery, so `stt:` and
`tts:` need no configuration.

    voxgate_probe:
      record_dir: /path/to/dir
"""
import itertools
import os
import time

from homeassistant.components.assist_pipeline import pipeline as assist_pipeline
from homeassistant.helpers import discovery

DOMAIN = "voxgate_probe"
RUNS = itertools.count(1)


async def async_setup(hass, config):
    record_dir = config.get(DOMAIN, {}).get("record_dir")
    if not record_dir:
        raise ValueError("voxgate_probe: record_dir is required")
    os.makedirs(record_dir, exist_ok=True)
    hass.data["voxgate_probe_dir"] = record_dir
    original = assist_pipeline.PipelineInput.execute

    async def execute(self):
        if self.stt_stream is not None:
            self.stt_stream = _recorded(self.stt_stream, record_dir, next(RUNS))
        await original(self)

    assist_pipeline.PipelineInput.execute = execute
    for platform in ("stt", "tts"):
        hass.async_create_task(discovery.async_load_platform(hass, platform, DOMAIN, {}, config))
    return True


async def _recorded(stream, record_dir, run):
    # The transcript reads the run's number back from here.
    with open(os.path.join(record_dir, "current"), "w") as f:
        f.write(str(run))
    path = os.path.join(record_dir, f"run-{run}")
    with open(path + ".pcm", "wb") as out, open(path + ".times", "w") as times:
        async for chunk in stream:
            times.write(f"{time.time():.6f}\n")
            out.write(chunk)
            out.flush()
            times.flush()
            yield chunk
