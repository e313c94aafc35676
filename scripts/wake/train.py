"""The training data of the built-in wake words (positive windows, negative streams, masks, hard negatives),
which conv.py trains the shipped model on; and, run as a script, the model the first built-in was: rustpotter's
neural model (an MLP), learnt from the phrase's training takes against the other phrases, synthetic speech and
noise. Prints its progress; writes the .rpw, and its numpy twin (for sweep.py) in the cache. The first
built-in was made with `VOXGATE_WAKE_POSITIVE_UNTIL=36 train.py jarvis OUT.rpw --seed 2 --rounds 4 --reps 20`;
its figures are in docs/BENCHMARKS.md ("Before").

    python3 train.py jarvis OUT.rpw [--kind large] [--frames 100] [--seed 1] [--reps 12]
                     [--rounds 2] [--epochs 6]    (VOXGATE_WAKE_POSITIVE_UNTIL: positive windows, in 10 ms)
"""

import argparse
import os
import time

import numpy as np

import corpus
import features
import mix
import model
import speech

RATE = 16000
SIZE = 16
NEG_STRIDE = 3
# Windows ending this many frames (10 ms) after the phrase, or fewer, are positives.
POSITIVE_UNTIL = int(os.environ.get("VOXGATE_WAKE_POSITIVE_UNTIL", 26))


def backgrounds(rng, seconds, part, target):
    """Background tracks: three colours of noise, synthetic speech and babble of the phrases other than
    `target` (`part` picks the speech and clips of the training or the dev side, so dev never hears training
    audio)."""
    n = seconds * RATE
    talk = speech.make(40).astype(np.float64)
    cut = int(len(talk) * 0.75)
    talk = talk[:cut] if part == "train" else talk[cut:]
    others = []
    for p in corpus.PHRASES:
        if p != target:
            others += [x for _, x in corpus.split(p)[part]]
    babble = np.zeros(n)
    for _ in range(int(seconds * 3)):
        x = others[rng.integers(len(others))].astype(np.float64)
        at = rng.integers(0, n - len(x))
        babble[at: at + len(x)] += x / mix.speech_rms(x)
    return {
        "white": mix.noise("white", n, rng),
        "pink": mix.noise("pink", n, rng),
        "brown": mix.noise("brown", n, rng),
        "speech": np.resize(talk, n),
        "babble": babble,
    }


def frame_of(sample):
    """The index of the feature frame that ends at `sample` (features.mfcc: frame i ends at 160 (i + 3))."""
    return np.asarray(sample) // features.SHIFT - 3


# The share of takes `mix.coloured` in training (conv.py --colour); train.py's MLP was trained without.
COLOUR = 0.0


def positive_windows(clips, bgs, reps, frames, rng, snr=(0, 30)):
    xs, ys = [], []
    names = list(bgs)
    for r in range(reps):
        order = rng.permutation(len(clips))
        bg = bgs[names[r % len(names)]] if r % (len(names) + 1) != len(names) else None
        audio, ends = mix.stream([clips[i] for i in order], bg, snr, rng, speeds=(0.88, 1.12), colour=COLOUR)
        f = features.mfcc(audio)
        e = frame_of(ends)
        for d in range(0, POSITIVE_UNTIL, 2):
            idx = e + d
            idx = idx[(idx >= frames) & (idx < len(f))]
            xs.append(features.windows(f, frames, idx)); ys.append(np.ones(len(idx), np.int64))
        for d in range(-50, -19, 6):
            idx = e + d
            idx = idx[(idx >= frames) & (idx < len(f))]
            xs.append(features.windows(f, frames, idx)); ys.append(np.zeros(len(idx), np.int64))
    return np.concatenate(xs), np.concatenate(ys)


# Words near each phrase, said by the synthetic voices: negatives the other phrases do not give.
CONFUSABLE = {
    "jarvis": ["travis", "harvest", "nervous", "service", "jars", "hey travis", "marvin", "jarred", "carcass",
               "harvey", "jar", "art is", "java"],
    "computer": ["commuter", "compute", "computing", "come here", "pewter", "compete", "comfort", "computers are"],
    "alexa": ["alexander", "election", "a lexus", "alex", "elixir", "relax a"],
}
SYNTHETIC = {"jarvis": ["jarvis", "hey jarvis"], "computer": ["computer", "hey computer"], "alexa": ["alexa"]}


def negative_stream(target, part, rng, bgs, reps=3, snr=(0, 30)):
    """Other phrases (over backgrounds, `reps` times at other speeds), words like the target and synthetic
    speech in the foreground, and plain backgrounds, as one stream."""
    import speech as sp
    clips = []
    for p in corpus.PHRASES:
        if p != target:
            clips += [x for _, x in corpus.split(p)[part]]
    near = []
    for w in CONFUSABLE.get(target, []):
        near += sp.phrase(w, 1)
    pieces = []
    names = list(bgs) + [None]
    k = 0
    for r in range(reps):
        pool = clips + (near if r == 0 else [])
        pool = [pool[i] for i in rng.permutation(len(pool))]
        for i in range(0, len(pool), 60):
            name = names[k % len(names)]
            k += 1
            a, _ = mix.stream(pool[i: i + 60], bgs[name] if name else None, snr, rng, gap=(0.1, 1.0),
                              speeds=(0.9, 1.1) if r else None, colour=COLOUR)
            pieces.append(a)
    talk = sp.make(40)
    talk = talk[: int(len(talk) * 0.75)].astype(np.float64)
    pieces.append((talk + mix.noise("pink", len(talk), rng) * mix.rms(talk) * 0.03).clip(-32768, 32767).astype(np.int16))
    for name in list(bgs):
        x = bgs[name][: 20 * RATE]
        pieces.append((x / mix.rms(x) * 32767 * 10 ** (rng.uniform(-45, -20) / 20)).clip(-32768, 32767).astype(np.int16))
    return np.concatenate(pieces)


def all_windows(f, frames, stride):
    idx = np.arange(frames, len(f), stride)
    return idx


def detections(margin, need, threshold, frames):
    """rustpotter's eager detection over per-frame margins: `need` windows over the threshold, each within
    frames/2 of the last, fire on the next frame; then a fresh window (frames) before scoring resumes."""
    out = []
    count, countdown, i = 0, 0, frames
    n = len(margin)
    while i < n:
        if count and countdown == 0:
            count = 0
        if count >= need:
            out.append(i)
            count, countdown = 0, 0
            i += frames
            continue
        if countdown:
            countdown -= 1
        if margin[i] >= threshold:
            count += 1
            countdown = frames // 2
        i += 1
    return np.array(out, dtype=np.int64)


def masked(x, rng, frames):
    """SpecAugment-style: half the rows lose one coefficient throughout, half lose up to 10 frames."""
    x = x.reshape(len(x), frames, SIZE).copy()
    n = len(x)
    rows = np.nonzero(rng.random(n) < 0.5)[0]
    x[rows, :, rng.integers(0, SIZE, len(rows))] = 0
    rows = np.nonzero(rng.random(n) < 0.5)[0]
    for r in rows:
        w = int(rng.integers(1, 11))
        t = int(rng.integers(0, frames - w))
        x[r, t: t + w] = 0
    return x.reshape(n, -1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("out")
    ap.add_argument("--kind", default="large")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    bgs = backgrounds(rng, 300, "train", a.target)
    import speech as sp
    clips = [x for _, x in corpus.split(a.target)["train"]]
    px, py = positive_windows(clips, bgs, a.reps, a.frames, rng)
    synthetic = []
    for text in SYNTHETIC.get(a.target, []):
        synthetic += sp.phrase(text, 2)
    if synthetic:
        sx, sy = positive_windows(synthetic, bgs, max(1, a.reps // 4), a.frames, rng)
        px, py = np.concatenate([px, sx]), np.concatenate([py, sy])
    neg = negative_stream(a.target, "train", rng, bgs)
    nf = features.mfcc(neg)
    nidx = all_windows(nf, a.frames, NEG_STRIDE)
    nx = features.windows(nf, a.frames, nidx)
    print(f"windows: {int(py.sum())} positive, {len(py) - int(py.sum())} early, {len(nx)} negative "
          f"({len(neg) / RATE / 60:.0f} min); {time.time() - t0:.0f} s", flush=True)
    x = np.concatenate([px, nx])
    y = np.concatenate([py, np.zeros(len(nx), np.int64)])
    scale = x.std(axis=0) + 1e-3
    h1, h2 = model.hidden(a.kind, a.frames)
    mlp = model.Mlp(x.shape[1], h1, h2, 2, rng)
    for rnd in range(a.rounds + 1):
        pos_w = 0.5 / max(1, y.sum())
        neg_w = 0.5 / max(1, (y == 0).sum())
        w = np.where(y == 1, pos_w, neg_w).astype(np.float32)
        for ep in range(a.epochs):
            order = rng.permutation(len(x))
            lr = 1e-3 if ep < a.epochs - 2 else 3e-4
            losses = []
            for i in range(0, len(order), 256):
                b = order[i: i + 256]
                losses.append(mlp.step(masked(x[b], rng, a.frames) / scale, y[b], w[b], lr))
            print(f"round {rnd} epoch {ep} loss {np.mean(losses):.4f}; {time.time() - t0:.0f} s", flush=True)
        if rnd == a.rounds:
            break
        # Hard negatives: every window of the negative stream the model likes.
        allidx = np.arange(a.frames, len(nf))
        hard = []
        for i in range(0, len(allidx), 50000):
            chunk = allidx[i: i + 50000]
            m = mlp.margin(features.windows(nf, a.frames, chunk) / scale)
            hard.append(chunk[m > 0])
        hard = np.concatenate(hard)
        print(f"round {rnd}: {len(hard)} hard negative windows", flush=True)
        if len(hard):
            hx = features.windows(nf, a.frames, hard)
            x = np.concatenate([x, hx, hx])
            y = np.concatenate([y, np.zeros(2 * len(hx), np.int64)])
    rms = np.median([mix.rms(c / 32767.0) for c in clips])
    model.save(mlp, scale, a.out, a.target, a.frames, SIZE, a.kind, rms)
    # Its numpy twin, for sweep.py.
    np.savez(corpus.cache_dir() / (os.path.basename(a.out) + ".npz"), *mlp.p, scale=scale)
    print(f"wrote {a.out}; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
