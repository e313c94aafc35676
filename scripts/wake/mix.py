"""Streams of clips over background, with where each phrase ends: what training and the benchmark score on."""

import numpy as np

RATE = 16000
MARGIN = int(0.08 * RATE)  # corpus.trim keeps this much after the phrase


def noise(kind, n, rng):
    w = rng.standard_normal(n)
    if kind == "white":
        return w
    f = np.fft.rfft(w)
    k = np.arange(len(f)) + 1.0
    f = f / (np.sqrt(k) if kind == "pink" else k)
    return np.fft.irfft(f, n)


def rms(x):
    return float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2)) + 1e-9)


def speech_rms(x):
    """The level of the loud part of a clip (frames within 20 dB of its loudest)."""
    n = len(x) // 160
    e = (np.asarray(x[: n * 160], dtype=np.float64).reshape(n, 160) ** 2).mean(axis=1)
    loud = e[e > e.max() / 100]
    return float(np.sqrt(loud.mean()) + 1e-9)


def speed(x, factor):
    """Plays `x` `factor` times faster (pitch moves with it)."""
    n = int(len(x) / factor)
    return np.interp(np.arange(n) * factor, np.arange(len(x)), x.astype(np.float64))


def coloured(x, rng):
    """`x` as another microphone and room would give it: the spectrum tilted about 1 kHz by -10 to +4 dB per
    octave (within 20 dB either way; some takes have most of their energy at the voice's fundamental, others
    little below 300 Hz), and one time in three cut above 2.5-6 kHz at 24 dB per octave."""
    f = np.maximum(np.fft.rfftfreq(len(x), 1 / RATE), 50.0)
    gain_db = np.clip(rng.uniform(-10, 4) * np.log2(f / 1000), -20, 20)
    if rng.random() < 1 / 3:
        gain_db -= 24 * np.log2(np.maximum(f / rng.uniform(2500, 6000), 1))
    return np.fft.irfft(np.fft.rfft(x) * 10 ** (gain_db / 20), len(x))


def stream(clips, background, snr_db, rng, gap=(0.4, 1.6), level=(-32, -12), speeds=None, colour=0.0):
    """Places each clip after a random gap over `background` (float, looped as needed) at `snr_db` (a number
    or a (low, high) range per clip; None for no background). With `colour`, that share of the clips is
    `coloured` first. Returns int16 audio and, per clip, the sample where its phrase ends."""
    pieces, ends, pos = [], [], 0
    for x in clips:
        x = np.asarray(x, dtype=np.float64)
        if speeds:
            x = speed(x, rng.uniform(*speeds))
        if colour and rng.random() < colour:
            x = coloured(x, rng)
        g = int(rng.uniform(*gap) * RATE)
        target = 32767 * 10 ** (rng.uniform(*level) / 20)
        x = x * target / speech_rms(x)
        pieces.append(np.zeros(g))
        pieces.append(x)
        pos += g + len(x)
        ends.append(pos - MARGIN)
    pieces.append(np.zeros(int(gap[1] * RATE)))
    fg = np.concatenate(pieces)
    out = fg.copy()
    if background is not None:
        bg = np.resize(background, len(fg)).astype(np.float64)
        bg = bg / rms(bg)
        # The background's level follows each clip's level and SNR; between clips it keeps the last.
        gain = np.zeros(len(fg))
        start = 0
        level_now = None
        for piece in pieces:
            if len(piece) and np.any(piece):
                snr = rng.uniform(*snr_db) if isinstance(snr_db, tuple) else snr_db
                level_now = speech_rms(piece) / 10 ** (snr / 20)
                gain[start:] = level_now
            elif level_now is None:
                gain[start:] = 32767 * 10 ** (-40 / 20)
            start += len(piece)
        out = fg + bg * gain
    dither = rng.standard_normal(len(out)) * 2
    return np.clip(out + dither, -32768, 32767).astype(np.int16), np.array(ends)
