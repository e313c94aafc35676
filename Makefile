# The two commands of the README: `make demo` and `make test`. Both install what they need first.
CARGO ?= cargo

.PHONY: all deps build release test demo bench audio clean

all: build

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --locked

release: deps
	$(CARGO) build --locked --release

# The whole suite: unit and integration tests, including cpal capture through a fake ALSA device.
test: deps
	$(CARGO) nextest run --locked --no-fail-fast

demo: deps
	$(CARGO) run --locked --quiet -- demo

# Figures for docs/BENCHMARKS.md.
bench: release
	$(CARGO) bench --locked --bench wake
	$(CARGO) bench --locked --bench session

# Re-make the bundled recordings from synthetic speech (the results are committed).
audio:
	@scripts/deps.sh audio
	scripts/make-audio.sh

clean:
	$(CARGO) clean
