//! Integration tests: the real binary and the real audio paths.

mod capture;
mod interop;
mod cli;
mod control;
mod daemon;
mod files;
mod homeassistant;
mod metrics;
mod playback;
mod sessions;
mod support;
mod system;
mod wake;
