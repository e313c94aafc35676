//! Decoding what is to be played: MP3 (what Home Assistant's speech synthesis answers by default), WAV and
//! FLAC, with symphonia, to mono 16-bit at the file's own rate.

use std::io::Cursor;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::DecoderOptions;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::Clip;

/// The longest a sound may be: what an answer needs, with memory bounded (2 min at 48 kHz is 11 MB).
pub const MAX_SECONDS: u64 = 120;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not audio voxgate can decode (MP3, WAV or FLAC): {0}")]
    Format(String),
    #[error("no audio track")]
    NoTrack,
    #[error("cannot decode: {0}")]
    Codec(String),
    #[error("longer than {MAX_SECONDS} s")]
    TooLong,
    #[error("no samples")]
    Empty,
}

/// Decodes `bytes`; `hint` is a file extension or a MIME type when known ("mp3", "audio/mpeg").
pub fn decode(name: &str, bytes: Vec<u8>, hint: Option<&str>) -> Result<Clip, DecodeError> {
    let mut h = Hint::new();
    if let Some(x) = hint {
        if x.contains('/') {
            h.mime_type(x);
        } else {
            h.with_extension(x);
        }
    }
    let stream = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let probed = symphonia::default::get_probe()
        .format(&h, stream, &FormatOptions::default(), &MetadataOptions::default())
        .map_err(|e| DecodeError::Format(e.to_string()))?;
    let mut format = probed.format;
    let track = format.default_track().ok_or(DecodeError::NoTrack)?;
    let track_id = track.id;
    let mut decoder =
        symphonia::default::get_codecs().make(&track.codec_params, &DecoderOptions::default()).map_err(|e| DecodeError::Codec(e.to_string()))?;
    let mut rate = track.codec_params.sample_rate.unwrap_or(0);
    let mut mono: Vec<i16> = Vec::new();
    let mut buf: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(symphonia::core::errors::Error::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(symphonia::core::errors::Error::ResetRequired) => break,
            Err(e) => return Err(DecodeError::Codec(e.to_string())),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged frame is skipped, as players do.
            Err(symphonia::core::errors::Error::DecodeError(_)) => continue,
            Err(e) => return Err(DecodeError::Codec(e.to_string())),
        };
        let spec = *decoded.spec();
        rate = spec.rate;
        let channels = spec.channels.count().max(1);
        let b = buf.get_or_insert_with(|| SampleBuffer::new(decoded.capacity() as u64, spec));
        if b.capacity() < decoded.capacity() * channels {
            *b = SampleBuffer::new(decoded.capacity() as u64, spec);
        }
        b.copy_interleaved_ref(decoded);
        for group in b.samples().chunks_exact(channels) {
            let v = group.iter().sum::<f32>() / channels as f32;
            mono.push(crate::audio::convert::to_i16(v));
        }
        if rate > 0 && mono.len() as u64 > MAX_SECONDS * rate as u64 {
            return Err(DecodeError::TooLong);
        }
    }
    if mono.is_empty() || rate == 0 {
        return Err(DecodeError::Empty);
    }
    Ok(Clip::new(name, rate, mono))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, samples: &[i16]) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let spec = hound::WavSpec { channels, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::new(&mut out, spec).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
        out.into_inner()
    }

    #[test]
    fn a_mono_wav_decodes_bit_for_bit_and_stereo_is_averaged() {
        let samples: Vec<i16> = (0..4000).map(|i| ((i * 37) % 20000 - 10000) as i16).collect();
        let clip = decode("a", wav(22050, 1, &samples), Some("wav")).unwrap();
        assert_eq!((clip.rate, &clip.samples[..]), (22050, &samples[..]));
        let stereo: Vec<i16> = samples.iter().flat_map(|s| [*s, *s]).collect();
        let clip = decode("b", wav(16000, 2, &stereo), None).unwrap();
        assert_eq!(&clip.samples[..], &samples[..]);
    }

    #[test]
    fn what_is_not_audio_is_named_as_such() {
        let e = decode("c", b"<html>404 Not Found</html>".to_vec(), Some("audio/mpeg")).unwrap_err();
        assert!(matches!(e, DecodeError::Format(_) | DecodeError::Empty | DecodeError::Codec(_)), "{e}");
    }
}
