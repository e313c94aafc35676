"""rustpotter 3.0.2's features in numpy, value for value: what its detector computes from 16 kHz audio.

30 ms frames every 10 ms; each 10 ms part is pre-emphasised on its own (0.97, the part's first sample kept);
Hamming window, magnitude spectrum (240 bins), a mel filter bank of `size + 1` triangles over its power, log,
DCT-II (times 2), the first coefficient dropped. A model's input is `train_size` frames with each coefficient's
mean over those frames subtracted, flattened frame after frame.
"""

import numpy as np

RATE = 16000
FRAME = 480
SHIFT = 160
F32_MIN_POSITIVE = np.float32(1.1754944e-38)


def _mel(f):
    return 1127.0 * np.log(1.0 + f / 700.0)


def filter_bank(n, spectrum=FRAME // 2, rate=RATE):
    max_mel = np.floor(np.float32(_mel(rate // 2)))
    min_mel = np.floor(np.float32(_mel(0)))
    centres = []
    for i in range(n + 2):
        f = np.float32(i * (max_mel - min_mel) / (n + 1) + min_mel)
        tmp = np.float32(np.log(np.float32(1 + 1000.0 / 700.0)) / 1000.0)
        tmp = (np.exp(np.float32(f * tmp)) - 1.0) / np.float32(rate / 2.0)
        centres.append(int(np.floor(np.float32(0.5 + 700.0 * spectrum * tmp))))
    fb = np.zeros((n, spectrum), dtype=np.float32)
    for i in range(n):
        a, c, b = centres[i], centres[i + 1], centres[i + 2]
        for k in range(a, c):
            fb[i, k] = (k - a) / (c - a)
        for k in range(c, b):
            fb[i, k] = (b - k) / (b - c)
    return fb


_CACHE = {}


def _tables(size):
    if size not in _CACHE:
        n = size + 1
        fb = filter_bank(n)
        k = np.arange(n)[:, None]
        m = np.arange(n)[None, :]
        dct = 2.0 * np.cos(np.pi / n * (m + 0.5) * k)
        ham = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(FRAME) / (FRAME - 1))
        _CACHE[size] = (fb, dct.astype(np.float32), ham.astype(np.float32))
    return _CACHE[size]


def mfcc(audio, size=16):
    """Frames of `size` coefficients for int16 (or float in [-1, 1]) audio; frame i ends at sample 160 (i + 3)."""
    x = np.asarray(audio)
    if x.dtype == np.int16:
        x = x.astype(np.float32) / 32767.0
    x = x.astype(np.float32)
    parts = len(x) // SHIFT
    if parts < 3:
        return np.zeros((0, size), dtype=np.float32)
    p = x[: parts * SHIFT].reshape(parts, SHIFT)
    e = p.copy()
    e[:, 1:] = p[:, 1:] - np.float32(0.97) * p[:, :-1]
    idx = np.arange(2, parts)
    frames = np.concatenate([e[idx - 2], e[idx - 1], e[idx]], axis=1)
    fb, dct, ham = _tables(size)
    spec = np.abs(np.fft.rfft(frames * ham, axis=1))[:, : FRAME // 2].astype(np.float32)
    mel = (spec * spec) @ fb.T
    logs = np.log(mel + F32_MIN_POSITIVE)
    c = logs @ dct.T
    return c[:, 1:].astype(np.float32)


def windows(frames, length, ends):
    """The model inputs whose last frame is each of `ends`: `length` frames, mean-removed, flattened."""
    idx = np.asarray(ends)[:, None] - length + 1 + np.arange(length)[None, :]
    w = frames[idx]
    w = w - w.mean(axis=1, keepdims=True)
    return w.reshape(len(ends), -1)
