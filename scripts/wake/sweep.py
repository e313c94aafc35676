"""Threshold and min_scores sweep of a trained model (its numpy twin, train.py's .npz) over the benchmark's
streams, with rustpotter's detection logic simulated (the one the first built-in chose its settings with;
conv.py uses its margins and the same logic for the convolutional model).

    python3 sweep.py MODEL.rpw [phrase]
"""

import sys

import numpy as np
import soundfile as sf

import bench
import features
import model
import train


def load(path):
    """The numpy twin train.py saved beside the cache for the model at `path`."""
    import corpus
    import os
    twin = path + ".npz" if os.path.exists(path + ".npz") else corpus.cache_dir() / (os.path.basename(path) + ".npz")
    z = np.load(twin)
    p = [z[f"arr_{i}"] for i in range(6)]
    m = model.Mlp(1, 1, 1, 2, np.random.default_rng(0))
    m.p = p
    return m, z["scale"], p[0].shape[0] // features.mfcc(np.zeros(16000, np.int16)).shape[1]


def margins(m, scale, frames, wav):
    a, _ = sf.read(wav, dtype="int16")
    f = features.mfcc(a)
    out = np.full(len(f), -99.0, dtype=np.float32)
    idx = np.arange(frames, len(f))
    for i in range(0, len(idx), 50000):
        c = idx[i: i + 50000]
        out[c] = m.margin(features.windows(f, frames, c) / scale)
    return out


def main():
    path = sys.argv[1]
    phrase = sys.argv[2] if len(sys.argv) > 2 else "jarvis"
    d = bench.streams(phrase)
    m, scale, frames = load(path)
    neg = margins(m, scale, frames, d / "neg.wav")
    hours = len(neg) / 100 / 3600
    pos = {snr: (margins(m, scale, frames, d / f"pos-{snr}.wav"), np.load(d / f"pos-{snr}.npy")) for snr in (10, 20)}
    print("threshold(margin) min_scores | miss10 miss20 | FA/h | delay ms")
    for th in [2.2, 3, 4, 5, 6, 7, 8, 10]:
        for need in [2, 4, 6, 8, 12]:
            fa = len(train.detections(neg, need, th, frames)) / hours
            miss, delays = [], []
            for snr, (mg, ends) in pos.items():
                det_ms = (train.detections(mg, need, th, frames) + 3) * 10
                caught, dl, _ = bench.score(det_ms, ends)
                miss.append(100 * (1 - caught / len(ends)))
                delays += dl
            print(f"{th:5} {need:3} | {miss[0]:5.1f} {miss[1]:5.1f} | {fa:7.1f} | {np.median(delays) if delays else 0:.0f}")


if __name__ == "__main__":
    main()
