"""The real-voice wake-word benchmark (`make wake-bench`): the daemon's own detector (`voxgate wake-test`, gate
and all) over long streams built from the recordings it was not trained on.

- misses: each dev-side take of the phrase, three times over three backgrounds (pink noise, babble of other
  phrases' dev takes, synthetic speech), at 10 dB and at 20 dB SNR, 1.5–3 s apart; a take is caught by a
  detection from 0.3 s before to 1.2 s after the end of its phrase, and the delay is measured from that end.
- false alarms: the other phrases' dev takes, over the same backgrounds and in the clear, at 5–25 dB SNR,
  repeated with other speeds and levels to reach an hour, plus the dev part of the synthetic speech;
  every detection is a false alarm.
- false alarms on music: two hours of real music (Debian's wesnoth-1.16-music), then half an hour of it under
  synthetic speech, as a TV plays; every detection is a false alarm.
- cost: the detector process's CPU time over the audio's duration (decoding included), on the negative
  stream (speech) and on ten minutes of a quiet room.

    python3 bench.py [--binary target/release/voxgate] [--model builtin:jarvis] [--phrase jarvis]
                     [--sensitivity 0.5 ...]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

import corpus
import mix
import train

RATE = 16000


def positives(phrase, snr, rng, bgs):
    clips = [x for _, x in corpus.split(phrase)["dev"]]
    audio, ends = [], []
    offset = 0
    for name in ["pink", "babble", "speech"]:
        a, e = mix.stream(clips, bgs[name], float(snr), rng, gap=(1.5, 3.0), speeds=None)
        audio.append(a)
        ends.append(e + offset)
        offset += len(a)
    return np.concatenate(audio), np.concatenate(ends)


def negatives(phrase, rng, bgs, minutes=60):
    clips = []
    for p in corpus.PHRASES:
        if p != phrase:
            clips += [x for _, x in corpus.split(p)["dev"]]
    pieces, total, i = [], 0, 0
    names = ["pink", "babble", "speech", "white", None]
    talk = bgs["speech"]
    pieces.append(np.clip(talk, -32768, 32767).astype(np.int16) if talk.max() > 1 else talk)
    while total < minutes * 60 * RATE:
        name = names[i % len(names)]
        order = rng.permutation(len(clips))
        a, _ = mix.stream([clips[k] for k in order], bgs[name] if name else None, (5.0, 25.0), rng,
                          gap=(0.2, 1.2), speeds=(0.92, 1.08) if i else None)
        pieces.append(a)
        total += len(a)
        i += 1
    return np.concatenate(pieces)


MUSIC = "/usr/share/games/wesnoth/1.16/data/core/music"


def music(rng):
    """Real music (Debian's wesnoth-1.16-music: 40 orchestral and choral tracks, about two hours), each at its
    own level from -35 to -15 dBFS; then the first half hour again as a TV would play it: under the synthetic
    speech the benchmark holds out, 10 dB below it."""
    import glob
    tracks = sorted(glob.glob(f"{MUSIC}/*.ogg"))
    if not tracks:
        sys.exit(f"{MUSIC}: no music there; install it: apt-get install wesnoth-1.16-music")
    pieces = []
    for t in tracks:
        raw = subprocess.run(["sox", t, "-t", "raw", "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed", "-"],
                             capture_output=True, check=True).stdout
        x = np.frombuffer(raw, dtype=np.int16).astype(np.float64)
        level = mix.rms(x)
        if level < 32767 * 10 ** (-60 / 20):
            continue  # the package's "silence" track: near-silence, which would be raised to noise
        pieces.append(x / level * 32767 * 10 ** (rng.uniform(-35, -15) / 20))
    alone = np.concatenate(pieces)
    import speech
    talk = speech.make(40)
    talk = talk[int(len(talk) * 0.75):].astype(np.float64)
    under = alone[: 30 * 60 * RATE].copy()
    talk = np.resize(talk, len(under))
    tv = talk / mix.rms(talk) * mix.rms(under) * 10 ** (10 / 20) + under
    return np.concatenate([alone, tv]).clip(-32768, 32767).astype(np.int16)


def streams(phrase):
    """The benchmark's WAV files for `phrase` (made once, cached) and the phrase ends of the positives."""
    d = corpus.cache_dir() / f"bench-{phrase}"
    d.mkdir(exist_ok=True)
    done = d / "done"
    if not done.exists():
        rng = np.random.default_rng(11)
        bgs = train.backgrounds(rng, 300, "dev", phrase)
        talk = bgs["speech"]
        bgs["speech"] = talk / mix.rms(talk)
        for snr in (10, 20):
            a, e = positives(phrase, snr, rng, bgs)
            sf.write(d / f"pos-{snr}.wav", a, RATE, subtype="PCM_16")
            np.save(d / f"pos-{snr}.npy", e)
        # Real synthetic speech as it is (not as a background) leads the negative stream.
        import speech
        s = speech.make(40)
        s = s[int(len(s) * 0.75):]
        bgs["speech"] = s.astype(np.float64)
        sf.write(d / "neg.wav", negatives(phrase, rng, bgs), RATE, subtype="PCM_16")
        done.touch()
    if not (d / "music.wav").exists():
        sf.write(d / "music.wav", music(np.random.default_rng(13)), RATE, subtype="PCM_16")
    if not (d / "quiet.wav").exists():
        # A quiet room: ten minutes of low noise (about -80 dBFS).
        quiet = (np.random.default_rng(5).standard_normal(600 * RATE) * 3).astype(np.int16)
        sf.write(d / "quiet.wav", quiet, RATE, subtype="PCM_16")
    return d


def scan(binary, config, wav):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([binary, "wake-test", "--json", "-c", config, str(wav)], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"voxgate wake-test {wav} failed: {out.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    dets = [json.loads(line)["t_ms"] for line in out.stdout.splitlines() if line.strip()]
    return np.array(dets, dtype=np.int64), cpu


def score(dets_ms, ends):
    """(caught, delays in ms, detections matching no take)."""
    ends_ms = ends * 1000 // RATE
    used = set()
    delays = []
    for e in ends_ms:
        ok = [i for i, t in enumerate(dets_ms) if e - 300 <= t <= e + 1200 and i not in used]
        if ok:
            used.add(ok[0])
            delays.append(int(dets_ms[ok[0]] - e))
    return len(delays), delays, len(dets_ms) - len(used)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/voxgate")
    ap.add_argument("--model", default="")
    ap.add_argument("--phrase", default="jarvis")
    ap.add_argument("--sensitivity", type=float, nargs="*", default=[None])
    ap.add_argument("--extra", default="", help="more [wake] settings, TOML lines")
    a = ap.parse_args()
    d = streams(a.phrase)
    dur = {n: sf.info(d / f"{n}.wav").duration for n in ["pos-10", "pos-20", "neg", "music", "quiet"]}
    print(f"\n{a.model or 'default wake word'} on \"{a.phrase}\": {len(np.load(d / 'pos-10.npy'))} takes per SNR, "
          f"{dur['neg'] / 3600:.2f} h of other speech, {dur['music'] / 3600:.2f} h of music and TV-like mixes\n")
    print("| sensitivity | misses at 10 dB | misses at 20 dB | false alarms per hour | on music and TV | delay after the phrase (median, p90) | CPU on speech | CPU on a quiet room |")
    print("|---|---|---|---|---|---|---|---|")
    for s in a.sensitivity:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write("[wake]\n")
            if a.model:
                f.write(f"models = [{json.dumps(a.model)}]\n")
            if s is not None:
                f.write(f"sensitivity = {s}\n")
            f.write(a.extra.replace("\\n", "\n") + "\n")
            cfg = f.name
        row, delays = [], []
        for snr in (10, 20):
            dets, _ = scan(a.binary, cfg, d / f"pos-{snr}.wav")
            ends = np.load(d / f"pos-{snr}.npy")
            caught, dl, _ = score(dets, ends)
            delays += dl
            row.append(f"{100 * (1 - caught / len(ends)):.1f} % ({len(ends) - caught}/{len(ends)})")
        dets, cpu_speech = scan(a.binary, cfg, d / "neg.wav")
        fa = len(dets) / (dur["neg"] / 3600)
        on_music, _ = scan(a.binary, cfg, d / "music.wav")
        fa_music = len(on_music) / (dur["music"] / 3600)
        _, cpu_quiet = scan(a.binary, cfg, d / "quiet.wav")
        os.unlink(cfg)
        p = np.percentile(delays, [50, 90]) if delays else [float("nan")] * 2
        print(f"| {s if s is not None else 'default'} | {row[0]} | {row[1]} | {fa:.2f} ({len(dets)}) | {fa_music:.2f} ({len(on_music)}) | "
              f"{p[0]:.0f} ms, {p[1]:.0f} ms | {100 * cpu_speech / dur['neg']:.2f} % | {100 * cpu_quiet / dur['quiet']:.3f} % |",
              flush=True)


if __name__ == "__main__":
    main()
