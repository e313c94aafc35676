"""The real-voice corpus: clips loaded, trimmed to the spoken phrase, duplicates grouped, split train/dev.

Used by the trainer (train.py) and the benchmark (bench.py). The audio stays in the shared folder it is
read from; only a cache of decoded arrays is written, under $VOXGATE_WAKE_CACHE (default /tmp).
"""

import hashlib
import os
import pathlib

import numpy as np
import soundfile as sf

RATE = 16000
PHRASES = ["alexa", "computer", "jarvis", "smart_mirror", "snowboy", "view_glass"]


def data_dir():
    here = pathlib.Path(__file__).resolve().parents[2]
    d = pathlib.Path(os.environ.get("VOXGATE_WAKE_DATA", here.parent / "shared" / "wake-data"))
    if not all((d / p).is_dir() for p in PHRASES):
        raise SystemExit(f"{d}: no wake-word recordings there (a folder per phrase: {', '.join(PHRASES)}); "
                         "set VOXGATE_WAKE_DATA to where they are")
    return d


def cache_dir():
    d = pathlib.Path(os.environ.get("VOXGATE_WAKE_CACHE", "/tmp/voxgate-wake-cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def trim(x, margin=0.08):
    """The spoken part of a clip: 10 ms frames within 30 dB of the loudest, plus a margin each side."""
    n = len(x) // 160
    if n == 0:
        return x
    e = (x[: n * 160].astype(np.float64).reshape(n, 160) ** 2).mean(axis=1) + 1e-3
    db = 10 * np.log10(e)
    loud = np.nonzero(db > db.max() - 30)[0]
    m = int(margin * RATE)
    a = max(0, loud[0] * 160 - m)
    b = min(len(x), (loud[-1] + 1) * 160 + m)
    return x[a:b]


def _signature(x):
    """A coarse envelope for finding copies of one take."""
    n = len(x) // 160
    env = np.sqrt((x[: n * 160].astype(np.float64).reshape(n, 160) ** 2).mean(axis=1))
    return env / (np.linalg.norm(env) + 1e-9)


def _same_take(a, b):
    if abs(len(a) - len(b)) > 5:
        return False
    n = min(len(a), len(b))
    best = 0.0
    for s in range(-3, 4):
        x = a[max(0, s): n + min(0, s)]
        y = b[max(0, -s): n - max(0, s)]
        m = min(len(x), len(y))
        best = max(best, float(np.dot(x[:m], y[:m])))
    return best > 0.97


def load(phrase):
    """[(name, int16 trimmed audio, group)] for one phrase; copies of one take share a group."""
    cache = cache_dir() / f"{phrase}.npz"
    if cache.exists():
        z = np.load(cache, allow_pickle=True)
        return list(z["clips"])
    files = sorted((data_dir() / phrase).glob("*.flac"))
    clips = []
    for f in files:
        x, rate = sf.read(f, dtype="int16")
        assert rate == RATE, f"{f}: {rate} Hz"
        if x.ndim > 1:
            x = x[:, 0]
        clips.append([f.stem, trim(x), None])
    sigs = [_signature(c[1]) for c in clips]
    for i, c in enumerate(clips):
        if c[2] is not None:
            continue
        c[2] = c[0]
        for j in range(i + 1, len(clips)):
            if clips[j][2] is None and _same_take(sigs[i], sigs[j]):
                clips[j][2] = c[0]
    clips = [tuple(c) for c in clips]
    np.savez(cache, clips=np.array(clips, dtype=object))
    return clips


def side(group, dev_share=0.3):
    """'train' or 'dev', fixed per group (a hash of its first file name)."""
    h = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "dev" if h < dev_share else "train"


def split(phrase):
    clips = load(phrase)
    out = {"train": [], "dev": []}
    for name, x, group in clips:
        out[side(group)].append((name, x))
    return out


if __name__ == "__main__":
    for p in PHRASES:
        clips = load(p)
        groups = {}
        for _, _, g in clips:
            groups[g] = groups.get(g, 0) + 1
        s = split(p)
        d = np.array([len(x) / RATE for _, x, _ in clips])
        print(f"{p:13} clips {len(clips):4} takes {len(groups):4} (largest {max(groups.values())}) "
              f"train {len(s['train'])} dev {len(s['dev'])} trimmed s p5/50/95 {np.percentile(d, [5, 50, 95]).round(2)}")
