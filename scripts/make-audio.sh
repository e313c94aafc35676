#!/usr/bin/env bash
# Makes the bundled recordings from synthetic speech (espeak-ng + sox). The outputs are committed, because
# voices change between espeak-ng versions; this script is how they were made, to re-make or extend them.
#
#   scripts/make-audio.sh            # writes assets/demo.wav
#
# Needs: apt-get install espeak-ng sox
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=16000
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# say VOICE WORDS_PER_MIN PITCH "TEXT" OUT.wav: speech at 16 kHz mono 16-bit, silence trimmed at both ends.
say() {
    espeak-ng -v "$1" -s "$2" -p "$3" -w "$work/raw.wav" "$4"
    sox -R -D "$work/raw.wav" -r $RATE -c 1 -b 16 "$5" \
        silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse pad 0.05 0.05
}

# gap SECONDS OUT.wav: digital silence.
gap() {
    sox -R -D -n -r $RATE -c 1 -b 16 "$2" trim 0 "$1"
}

# with_noise IN.wav OUT.wav VOLUME: IN with pink noise mixed under it (VOLUME 0.003 is about -50 dBFS).
with_noise() {
    local len
    len=$(soxi -D "$1")
    sox -R -D -n -r $RATE -c 1 -b 16 "$work/noise.wav" synth "$len" pinknoise vol "$3"
    sox -R -D -m -v 1 "$1" -v 1 "$work/noise.wav" -b 16 "$2"
}

# The demo: wake word + command, silence, a decoy phrase, silence, wake word + command, silence.
make_demo() {
    local v=en-gb+m1
    gap 0.8 "$work/d0.wav"
    say $v 160 50 "hey jarvis" "$work/d1.wav"
    gap 0.25 "$work/d2.wav"
    say $v 160 50 "turn on the kitchen lights" "$work/d3.wav"
    gap 2.0 "$work/d4.wav"
    say $v 160 50 "hey travis, what is the weather like" "$work/d5.wav"
    gap 2.0 "$work/d6.wav"
    say $v 160 50 "hey jarvis" "$work/d7.wav"
    gap 0.25 "$work/d8.wav"
    say $v 160 50 "set a timer for five minutes" "$work/d9.wav"
    gap 2.5 "$work/d10.wav"
    sox "$work"/d{0,1,2,3,4,5,6,7,8,9,10}.wav "$work/demo-clean.wav"
    with_noise "$work/demo-clean.wav" assets/demo.wav 0.003
}

make_demo
echo "wrote assets/demo.wav ($(soxi -D assets/demo.wav) s)"
