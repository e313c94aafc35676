//! `audio.source = "stdin"`: raw s16le mono at `audio.sample_rate`, paced by whoever writes it. A live source:
//! frames the consumer cannot take are dropped and counted. End of input ends the source.

use std::io::{ErrorKind, Read};

use super::{AudioError, FrameSink, SourceContext};

pub(crate) fn run(ctx: SourceContext, mut sink: FrameSink) -> Result<(), AudioError> {
    ctx.stats.set_state(format!("reading raw s16le mono at {} Hz from stdin", ctx.spec.sample_rate));
    let samples = ctx.spec.samples();
    let mut buf = vec![0u8; samples * 2];
    let mut stdin = std::io::stdin().lock();
    let mut filled = 0;
    loop {
        let n = match stdin.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(source) => return Err(AudioError::Read { what: "stdin".into(), source }),
        };
        if ctx.stop.is_stopped() {
            return Ok(());
        }
        if n == 0 {
            if filled > 0 {
                // A partial last frame is padded with silence, like a file's.
                buf[filled..].fill(0);
                sink.push(to_pcm(&buf));
            }
            tracing::info!("end of input on stdin");
            return Ok(());
        }
        filled += n;
        if filled == buf.len() {
            filled = 0;
            if !sink.push(to_pcm(&buf)) {
                return Ok(());
            }
        }
    }
}

fn to_pcm(bytes: &[u8]) -> Vec<i16> {
    bytes.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect()
}
