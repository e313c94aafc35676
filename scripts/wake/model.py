"""rustpotter's neural wake word (`WakewordModel`): its MLP in numpy, trained with Adam, saved as a .rpw.

rustpotter runs `ln1 → relu → ln2 → relu → ln3` (the "small", "medium" and "large" types) over the flattened
window and reports the label with the largest output; its score is sigmoid((out[label] − out[none] − r) / r)
with r = 10 × `score_ref` (2.2 by default), so threshold 0.5 means a margin of 2.2.
"""

import cbor2
import numpy as np

SHIFTS = 3  # rustpotter's MFCCS_EXTRACTOR_OUT_SHIFTS


def hidden(kind, frames):
    return {
        "small": (frames // (SHIFTS * 2), frames // (SHIFTS * 2) // 2),
        "medium": (frames // SHIFTS, frames // (SHIFTS * 2)),
        "large": (frames // SHIFTS * 2, frames // (SHIFTS * 2)),
    }[kind]


class Mlp:
    def __init__(self, n_in, h1, h2, n_out, rng):
        def layer(i, o):
            return [rng.standard_normal((i, o)).astype(np.float32) * np.float32(np.sqrt(2.0 / i)), np.zeros(o, np.float32)]
        self.p = layer(n_in, h1) + layer(h1, h2) + layer(h2, n_out)
        self.m = [np.zeros_like(a) for a in self.p]
        self.v = [np.zeros_like(a) for a in self.p]
        self.t = 0

    def forward(self, x):
        w1, b1, w2, b2, w3, b3 = self.p
        a1 = np.maximum(x @ w1 + b1, 0)
        a2 = np.maximum(a1 @ w2 + b2, 0)
        return a2 @ w3 + b3, (a1, a2)

    def margin(self, x, batch=8192):
        """out[1] − out[0] for each row."""
        out = []
        for i in range(0, len(x), batch):
            o, _ = self.forward(x[i: i + batch])
            out.append(o[:, 1] - o[:, 0])
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def step(self, x, y, weight, lr, decay=1e-4):
        """One Adam step on weighted softmax cross-entropy; returns the loss."""
        w1, b1, w2, b2, w3, b3 = self.p
        o, (a1, a2) = self.forward(x)
        o = o - o.max(axis=1, keepdims=True)
        e = np.exp(o)
        prob = e / e.sum(axis=1, keepdims=True)
        n = len(x)
        loss = float(-(weight * np.log(prob[np.arange(n), y] + 1e-12)).sum() / weight.sum())
        d = prob
        d[np.arange(n), y] -= 1
        d *= (weight / weight.sum())[:, None]
        g3 = a2.T @ d
        gb3 = d.sum(0)
        d2 = (d @ w3.T) * (a2 > 0)
        g2 = a1.T @ d2
        gb2 = d2.sum(0)
        d1 = (d2 @ w2.T) * (a1 > 0)
        g1 = x.T @ d1
        gb1 = d1.sum(0)
        grads = [g1 + decay * w1, gb1, g2 + decay * w2, gb2, g3 + decay * w3, gb3]
        self.t += 1
        b1_, b2_ = 0.9, 0.999
        for i, g in enumerate(grads):
            self.m[i] = b1_ * self.m[i] + (1 - b1_) * g
            self.v[i] = b2_ * self.v[i] + (1 - b2_) * g * g
            mh = self.m[i] / (1 - b1_ ** self.t)
            vh = self.v[i] / (1 - b2_ ** self.t)
            self.p[i] -= (lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
        return loss


def save(mlp, scale, path, label, frames, mfcc_size, kind, rms_level):
    """Writes the .rpw rustpotter loads, with the input scaling folded into the first layer."""
    w1, b1, w2, b2, w3, b3 = mlp.p
    w1 = w1 / scale[:, None]

    def tensor(a):
        a = np.ascontiguousarray(a, dtype="<f4")
        return {"bytes": list(a.tobytes()), "dims": list(a.shape), "d_type": "f32"}

    weights = {
        "ln1.weight": tensor(w1.T), "ln1.bias": tensor(b1),
        "ln2.weight": tensor(w2.T), "ln2.bias": tensor(b2),
        "ln3.weight": tensor(w3.T), "ln3.bias": tensor(b3),
    }
    doc = {
        "labels": ["none", label],
        "train_size": frames,
        "mfcc_size": mfcc_size,
        "m_type": kind.capitalize(),
        "weights": weights,
        "rms_level": float(rms_level),
    }
    with open(path, "wb") as f:
        cbor2.dump(doc, f)
