"""Long synthetic speech for negatives: espeak-ng reading the licence texts under /usr/share/common-licenses
with a range of voices, speeds and pitches, 16 kHz int16, cached. Sentences holding a wake phrase are skipped."""

import re
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

from corpus import PHRASES, cache_dir

VOICES = ["en-us+m3", "en-us+f2", "en-gb+m1", "en-gb-x-rp+f4", "en-029+m2", "en-us+m7", "en-gb-scotland+f3",
          "en-us+f4", "en-gb+m4", "en-us+m1"]


def sentences():
    text = ""
    for name in ["GPL-3", "LGPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "Artistic"]:
        try:
            text += open(f"/usr/share/common-licenses/{name}", encoding="utf-8").read() + " "
        except OSError:
            pass
    words = [p.replace("_", " ") for p in PHRASES]
    out = []
    for s in re.split(r"(?<=[.;:])\s+", re.sub(r"\s+", " ", text)):
        s = s.strip()
        if 20 <= len(s) <= 300 and not any(w in s.lower() for w in words):
            out.append(s)
    return out


def make(minutes):
    path = cache_dir() / f"speech-{minutes}.npy"
    if path.exists():
        return np.load(path)
    rng = np.random.default_rng(7)
    chunks, total = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, s in enumerate(sentences()):
            v = VOICES[i % len(VOICES)]
            speed = int(rng.integers(130, 190))
            pitch = int(rng.integers(30, 70))
            raw, out = f"{tmp}/raw.wav", f"{tmp}/out.wav"
            subprocess.run(["espeak-ng", "-v", v, "-s", str(speed), "-p", str(pitch), "-w", raw, s], check=True)
            subprocess.run(["sox", raw, "-r", "16000", "-c", "1", "-b", "16", out], check=True)
            x, _ = sf.read(out, dtype="int16")
            chunks.append(x)
            chunks.append(np.zeros(int(rng.integers(1600, 12000)), dtype=np.int16))
            total += len(x)
            if total >= minutes * 60 * 16000:
                break
    a = np.concatenate(chunks)
    np.save(path, a)
    return a


if __name__ == "__main__":
    a = make(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
    print(f"{len(a) / 16000 / 60:.1f} min of synthetic speech")


# Voices the project's committed test recordings use (scripts/make-audio.sh): never trained on, so the tests
# show the built-in wake word detecting a voice it has not heard.
HELD_OUT_VOICES = {"en-us+m1", "en-gb+f3", "en-gb-x-rp+f4", "en-029+m2", "en-us-nyc+m6", "en-gb-x-gbclan+m7", "en-gb+m1"}


def phrase_voices():
    out = []
    for accent in ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-us-nyc",
                   "en-gb-x-gbcwmd"]:
        for variant in ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]:
            v = f"{accent}+{variant}"
            if v not in HELD_OUT_VOICES:
                out.append(v)
    return out


def phrase(text, per_voice=1, seed=3):
    """`text` said by every training voice at random speeds and pitches: [int16 clip], trimmed, cached."""
    from corpus import trim
    key = text.replace(" ", "_")
    path = cache_dir() / f"say-{key}-{per_voice}.npz"
    if path.exists():
        return list(np.load(path, allow_pickle=True)["clips"])
    rng = np.random.default_rng(seed)
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for v in phrase_voices():
            for _ in range(per_voice):
                raw, out = f"{tmp}/raw.wav", f"{tmp}/out.wav"
                subprocess.run(["espeak-ng", "-v", v, "-s", str(int(rng.integers(120, 200))), "-p",
                                str(int(rng.integers(25, 75))), "-w", raw, text], check=True)
                subprocess.run(["sox", raw, "-r", "16000", "-c", "1", "-b", "16", out], check=True)
                x, _ = sf.read(out, dtype="int16")
                clips.append(trim(x))
    np.savez(path, clips=np.array(clips, dtype=object))
    return clips
