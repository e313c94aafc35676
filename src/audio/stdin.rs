//! `audio.source = "stdin"`: raw s16le mono at `audio.sample_rate`, paced by whoever writes it. A live source:
//! frames the consumer cannot take are dropped and counted. End of input ends the source. The thread waits
//! for input and for its stop signal together (`poll`), so a stop never waits for the writer to send more.
//! While the consumer has relaxed the [`Pace`], it reads what has arrived once per batch instead of per write.

use std::os::fd::AsFd;

use nix::poll::PollTimeout;

use super::pace::{Pace, RELAXED_BATCH};
use super::{AudioError, FrameSink, SourceContext};

pub(crate) fn run(ctx: SourceContext, mut sink: FrameSink) -> Result<(), AudioError> {
    ctx.stats.set_state(format!("reading raw s16le mono at {} Hz from stdin", ctx.spec.sample_rate));
    let failed = |source| AudioError::Read { what: "stdin".into(), source };
    let frame_bytes = ctx.spec.samples() * 2;
    // Room for two relaxed batches: what a writer at real time puts in while this thread waits, with a margin.
    let mut buf = vec![0u8; frame_bytes * (2 * Pace::batch_frames(ctx.spec.frame_ms) as usize + 1)];
    // Read unbuffered, straight from the descriptor: a buffer could hold input that `poll` does not see.
    let stdin = std::io::stdin();
    let mut filled = 0;
    // The last read filled the buffer: more may be waiting, so read again before any relaxed wait.
    let mut more = false;
    loop {
        if !more && sink.relaxed() && !ctx.clock.sleep_until(ctx.clock.now() + RELAXED_BATCH, &ctx.stop) {
            return Ok(());
        }
        let (readable, stopped) = match ctx.stop.wait_readable(stdin.as_fd(), PollTimeout::NONE) {
            Ok(r) => r,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(failed(e.into())),
        };
        if stopped {
            return Ok(());
        }
        if !readable {
            continue;
        }
        let n = match nix::unistd::read(stdin.as_fd(), &mut buf[filled..]) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(failed(e.into())),
        };
        if n == 0 {
            if filled > 0 {
                // A partial last frame is padded with silence, like a file's.
                buf[filled..frame_bytes].fill(0);
                sink.push(to_pcm(&buf[..frame_bytes]));
            }
            tracing::info!("end of input on stdin");
            return Ok(());
        }
        more = filled + n == buf.len();
        filled += n;
        let whole = filled - filled % frame_bytes;
        for frame in buf[..whole].chunks_exact(frame_bytes) {
            if !sink.push(to_pcm(frame)) {
                return Ok(());
            }
        }
        buf.copy_within(whole..filled, 0);
        filled -= whole;
    }
}

fn to_pcm(bytes: &[u8]) -> Vec<i16> {
    bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}
