"""The built-in wake words' model: a small convolutional network over rustpotter's features, trained on the
same data as train.py's MLP (which it replaced: it shares its weights along time, which the MLP cannot), and
measured on the benchmark's held-out streams with the same detection logic as sweep.py. JAX on the CPU.

    python3 conv.py jarvis [--reps 20] [--rounds 3] [--epochs 6] [--seed 2] [--width 32] [--norm window|ema]
                           [--padding SAME|VALID] [--scale coefficient|position] [--load]
                           [--ensemble MEMBER ...] [--export PATH]

`--norm window --padding SAME` is rustpotter's input (each window's mean removed) and must be recomputed whole
for every window; `--norm ema --padding VALID` is the streaming form (each frame less a moving mean), whose
layers a detector can compute one output at a time: the one voxgate runs. Prints the training's progress,
then the sweep table; saves the weights (numpy) in the cache, which `--load` measures again without training.
`--ensemble 32-position 48-colour50` measures the mean margin of models trained before (the shipped "jarvis"
is four, named in `make wake-train`). `--export` writes the streaming form's model, one member or several, as
voxgate's detector reads it (assets/wake/jarvis.vxc), and the fixture its network is checked against
(tests/fixtures/wake/).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bench
import corpus
import features
import sweep
import train

FRAMES = 100
SIZE = train.SIZE
PADDING = "SAME"
NORM = "window"
SCALE = "coefficient"
# rustpotter's features and windows, before main() puts the moving-mean ones in their place (for train.py's
# and sweep.py's use too) with --norm ema.
_MFCC, _WINDOWS = features.mfcc, features.windows


def init(rng, width):
    """Three convolutions along time (kernel 5, 5, 3; each followed by max pooling), then two dense layers."""
    def w(shape, fan_in):
        return jnp.asarray(rng.standard_normal(shape).astype(np.float32) * np.sqrt(2.0 / fan_in))
    c1, c2, c3 = width, width * 3 // 2, width * 3 // 2
    return {
        "k1": w((5, SIZE, c1), 5 * SIZE), "b1": jnp.zeros(c1),
        "k2": w((5, c1, c2), 5 * c1), "b2": jnp.zeros(c2),
        "k3": w((3, c2, c3), 3 * c2), "b3": jnp.zeros(c3),
        "d1": w((flat() * c3, 32), flat() * c3), "e1": jnp.zeros(32),
        "d2": w((32, 2), 32), "e2": jnp.zeros(2),
    }


def flat():
    """Time steps left after the convolutions and pooling."""
    if PADDING == "SAME":
        return FRAMES // 2 // 2 // 5
    return (((FRAMES - 4) // 2 - 4) // 2 - 2) // 5


def conv(x, k, b):
    """'same' convolution along time: x (batch, time, channels), k (width, in, out)."""
    y = jax.lax.conv_general_dilated(x, k, (1,), PADDING, dimension_numbers=("NWC", "WIO", "NWC"))
    return jax.nn.relu(y + b)


def pool(x, n):
    b, t, c = x.shape
    return x[:, : t // n * n].reshape(b, t // n, n, c).max(axis=2)


def forward(p, x):
    x = x.reshape(x.shape[0], FRAMES, SIZE)
    x = pool(conv(x, p["k1"], p["b1"]), 2)
    x = pool(conv(x, p["k2"], p["b2"]), 2)
    x = pool(conv(x, p["k3"], p["b3"]), 5)
    x = jax.nn.relu(x.reshape(x.shape[0], -1) @ p["d1"] + p["e1"])
    return x @ p["d2"] + p["e2"]


def loss_fn(p, x, y, w):
    logp = jax.nn.log_softmax(forward(p, x))
    return -(w * jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]).sum() / w.sum()


@jax.jit
def margin_of(p, x):
    o = forward(p, x)
    return o[:, 1] - o[:, 0]


def ema_normalised(f, a=0.01):
    """Each frame minus an exponential moving mean of the frames so far (about 1 s): a normalisation a
    streaming detector can keep, where the per-window mean changes every frame."""
    m = f[0].astype(np.float64).copy()
    out = np.empty_like(f)
    for i in range(len(f)):
        m += a * (f[i] - m)
        out[i] = f[i] - m
    return out


def windows(f, ends):
    if NORM == "window":
        return _WINDOWS(f, FRAMES, ends)
    idx = np.asarray(ends)[:, None] - FRAMES + 1 + np.arange(FRAMES)[None, :]
    return f[idx].reshape(len(ends), -1)


def mfcc(audio):
    f = _MFCC(audio)
    return f if NORM == "window" else ema_normalised(f)


def input_scale(x):
    """Each input's spread: one per position in the window ("position", as the window form and the first
    streaming models had), or one per coefficient ("coefficient"). The detector computes each frame once and
    cannot scale it by where it sits in the window: it runs a position-scaled model with each coefficient's
    mean scale, which is how this script measures it too."""
    if NORM == "window" or SCALE == "position":
        return (x.std(axis=0) + 1e-3).astype(np.float32)
    return np.tile(x.reshape(len(x), FRAMES, SIZE).std(axis=(0, 1)) + 1e-3, FRAMES).astype(np.float32)


def load(path):
    """A member (parameters, scale) saved in the cache, as the detector runs it."""
    z = np.load(path)
    scale = z["scale"]
    if NORM == "ema":
        scale = np.tile(scale.reshape(FRAMES, SIZE).mean(axis=0), FRAMES)
    return {k: jnp.asarray(z[k]) for k in z.files if k != "scale"}, scale


def export(members, name, path):
    """The streaming form's members for voxgate's detector (src/wake/conv.rs): MessagePack, float32."""
    import msgpack
    assert NORM == "ema" and PADDING == "VALID"

    def tensor(v):
        v = np.asarray(v, dtype=np.float32)
        return {"shape": list(v.shape), "data": v.ravel().tolist()}

    model = {
        "format": "voxgate-conv/1",
        "name": name,
        "frames": FRAMES,
        "coefficients": SIZE,
        "ema": 0.01,
        "members": [{
            "scale": [float(v) for v in scale.reshape(FRAMES, SIZE).mean(axis=0)],
            "layers": {k: tensor(p[k]) for k in ["k1", "b1", "k2", "b2", "k3", "b3", "d1", "e1", "d2", "e2"]},
        } for p, scale in members],
    }
    with open(path, "wb") as f:
        f.write(msgpack.packb(model, use_single_float=True))
    print(f"wrote {path}")


def reference(members, wav, path):
    """The margins (and raw features) of every 10th window of `wav`, as the Python model computes them: the
    fixture the detector's own network is checked against."""
    import soundfile as sf
    a, _ = sf.read(wav, dtype="int16")
    raw = _MFCC(a)
    f = ema_normalised(raw)
    idx = np.arange(FRAMES, len(f), 10)
    m = Margins(members).margin(windows(f, idx))
    with open(path, "w") as out:
        out.write(f"# {wav.name}: frame, margin, its 16 MFCCs (before the moving mean); written by conv.py --export\n")
        for i, v in zip(idx, m):
            out.write("\t".join([str(i), f"{v:.5f}"] + [f"{c:.5f}" for c in raw[i]]) + "\n")
    print(f"wrote {path}")


def margins_all(p, x, batch=8192):
    return np.concatenate([np.asarray(margin_of(p, jnp.asarray(x[i: i + batch]))) for i in range(0, len(x), batch)])


class Margins:
    """sweep.margins' interface (with scale 1) for one model or the mean of several, each with its own scale."""

    def __init__(self, members):
        self.members = members

    def margin(self, x):
        return np.mean([margins_all(p, x / scale) for p, scale in self.members], axis=0)


def fit(a, rng, t0):
    """Trains the model on the training side; its parameters and the input scale."""
    bgs = train.backgrounds(rng, 300, "train", a.target)
    import speech as sp
    clips = [x for _, x in corpus.split(a.target)["train"]]
    px, py = train.positive_windows(clips, bgs, a.reps, FRAMES, rng)
    synthetic = []
    for text in train.SYNTHETIC.get(a.target, []):
        synthetic += sp.phrase(text, 2)
    if synthetic:
        sx, sy = train.positive_windows(synthetic, bgs, max(1, a.reps // 4), FRAMES, rng)
        px, py = np.concatenate([px, sx]), np.concatenate([py, sy])
    neg = train.negative_stream(a.target, "train", rng, bgs)
    nf = features.mfcc(neg)
    nx = features.windows(nf, FRAMES, train.all_windows(nf, FRAMES, train.NEG_STRIDE))
    print(f"windows: {int(py.sum())} positive, {len(py) - int(py.sum())} early, {len(nx)} negative; "
          f"{time.time() - t0:.0f} s", flush=True)
    x = np.concatenate([px, nx])
    y = np.concatenate([py, np.zeros(len(nx), np.int64)])
    scale = input_scale(x)
    p = init(rng, a.width)
    opt = optax.adamw(1e-3, weight_decay=1e-4)
    state = opt.init(p)

    @jax.jit
    def step(p, state, x, y, w, lr):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y, w)
        updates, state = opt.update(g, state, p)
        updates = jax.tree_util.tree_map(lambda u: u * lr, updates)
        return optax.apply_updates(p, updates), state, loss

    for rnd in range(a.rounds + 1):
        pos_w, neg_w = 0.5 / max(1, y.sum()), 0.5 / max(1, (y == 0).sum())
        w = np.where(y == 1, pos_w, neg_w).astype(np.float32)
        for ep in range(a.epochs):
            order = rng.permutation(len(x))
            lr = 1.0 if ep < a.epochs - 2 else 0.3
            losses = []
            for i in range(0, len(order) - 255, 256):
                b = order[i: i + 256]
                xb = train.masked(x[b], rng, FRAMES) / scale
                p, state, loss = step(p, state, jnp.asarray(xb), jnp.asarray(y[b]), jnp.asarray(w[b] * len(b)), lr)
                losses.append(float(loss))
            print(f"round {rnd} epoch {ep} loss {np.mean(losses):.4f}; {time.time() - t0:.0f} s", flush=True)
        if rnd == a.rounds:
            break
        allidx = np.arange(FRAMES, len(nf))
        hard = []
        for i in range(0, len(allidx), 50000):
            chunk = allidx[i: i + 50000]
            hard.append(chunk[margins_all(p, features.windows(nf, FRAMES, chunk) / scale) > 0])
        hard = np.concatenate(hard)
        print(f"round {rnd}: {len(hard)} hard negative windows", flush=True)
        if len(hard):
            hx = features.windows(nf, FRAMES, hard)
            x = np.concatenate([x, hx, hx])
            y = np.concatenate([y, np.zeros(2 * len(hx), np.int64)])
    return p, scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--norm", choices=["window", "ema"], default="window")
    ap.add_argument("--padding", choices=["SAME", "VALID"], default="SAME")
    ap.add_argument("--scale", choices=["coefficient", "position"], default="coefficient")
    ap.add_argument("--colour", type=float, default=0.0,
                    help="the share of training takes given another microphone's colour (mix.coloured)")
    ap.add_argument("--load", action="store_true", help="measure the model trained last time with these settings")
    ap.add_argument("--ensemble", nargs="+", metavar="MEMBER",
                    help="measure the mean margin of models trained before, named as in the cache (WIDTH[-position][-colourN][-seedN])")
    ap.add_argument("--export", metavar="PATH", help="write the (streaming form's) weights for voxgate's detector")
    a = ap.parse_args()
    global NORM, PADDING, SCALE
    NORM, PADDING, SCALE = a.norm, a.padding, a.scale
    if NORM == "ema":
        features.mfcc = mfcc
        features.windows = lambda f, length, ends: windows(f, ends)
    train.COLOUR = a.colour
    rng = np.random.default_rng(a.seed)
    t0 = time.time()
    stem = f"conv-{a.target}-{NORM}-{PADDING}"
    saved = corpus.cache_dir() / f"{stem}-{a.width}{'-position' if NORM == 'ema' and SCALE == 'position' else ''}{f'-colour{round(a.colour * 100)}' if a.colour else ''}{f'-seed{a.seed}' if a.seed != 2 else ''}.npz"
    if a.ensemble:
        members = [load(corpus.cache_dir() / f"{stem}-{m}.npz") for m in a.ensemble]
    elif a.load:
        members = [load(saved)]
    else:
        p, scale = fit(a, rng, t0)
        np.savez(saved, scale=scale, **{k: np.asarray(v) for k, v in p.items()})
        members = [load(saved)]
    if a.export:
        export(members, a.target, a.export)
        import pathlib
        fixtures = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "wake"
        reference(members, fixtures / "stream-en-us_m1.wav", fixtures / f"{a.target}-margins.tsv")
    d = bench.streams(a.target)
    m, one = Margins(members), np.float32(1)
    neg_m = sweep.margins(m, one, FRAMES, d / "neg.wav")
    hours = len(neg_m) / 100 / 3600
    music_m = sweep.margins(m, one, FRAMES, d / "music.wav")
    music_hours = len(music_m) / 100 / 3600
    pos = {snr: (sweep.margins(m, one, FRAMES, d / f"pos-{snr}.wav"), np.load(d / f"pos-{snr}.npy")) for snr in (10, 20)}
    print(f"\n{hours:.2f} h of other speech, {music_hours:.2f} h of music; {time.time() - t0:.0f} s\n"
          "margin min_scores | miss10 miss20 | FA/h | FA/h music | delay ms")
    for th in [0, 4, 8, 9, 10, 10.5, 11, 12, 13, 14, 15, 16, 17, 18, 20, 24]:
        for need in [1, 2, 4, 8]:
            fa = len(train.detections(neg_m, need, th, FRAMES)) / hours
            fa_music = len(train.detections(music_m, need, th, FRAMES)) / music_hours
            miss, delays = [], []
            for snr, (mg, ends) in pos.items():
                caught, dl, _ = bench.score((train.detections(mg, need, th, FRAMES) + 3) * 10, ends)
                miss.append(100 * (1 - caught / len(ends)))
                delays += dl
            print(f"{th:5} {need:3} | {miss[0]:5.1f} {miss[1]:5.1f} | {fa:7.1f} | {fa_music:7.1f} | {np.median(delays) if delays else 0:.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
