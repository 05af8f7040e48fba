//! Request bodies sent compressed (`Content-Encoding: gzip`, `deflate` or `zstd`), decoded
//! with the limit on what they decode to: `max_body_bytes` applies to the decoded body, and
//! decoding stops as soon as it would produce one byte more (413), so a small body that
//! inflates to gigabytes costs at most `max_body_bytes` of memory. The compressed body is
//! bounded by `max_body_bytes` too, before it is read. An encoding not named here is 415,
//! naming the supported ones; a body that is not what its encoding says is 400.
//!
//! OpenTelemetry's Collector (`otlphttp`) sends gzip by default.

use std::io::Read;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};

use crate::api::error::AppError;
use crate::app::AppState;
use crate::metrics::DecodeRefusal;
use crate::protocol::Code;

/// What the server decodes, as a 415 names it.
pub const SUPPORTED: &str = "gzip, deflate, zstd (or identity)";

/// The largest zstd window accepted (2^23 = 8 MiB): a decoder allocates its window, and the
/// format lets a sender ask for up to 2 GiB.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A refused body: why (for the counters) and the answer.
#[derive(Debug)]
pub struct Refused {
    pub reason: DecodeRefusal,
    pub error: AppError,
}

/// A request's body, read (bounded by axum's body limit) and decoded (bounded by
/// `max_body_bytes`): refusals are counted by reason and logged at debug.
pub fn request_body(
    app: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, AppError> {
    let max = app.config.ingest.max_body_bytes;
    let body = body.map_err(|r| AppError::body(r, max))?;
    decode(headers, body, max).map_err(|refused| {
        app.metrics.decode_refused[refused.reason as usize]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(reason = refused.reason.as_str(), error = %refused.error.error.message, "ingest body refused");
        refused.error
    })
}

/// `body` as its sender meant it: decoded by its `Content-Encoding`, at most `max` bytes.
pub fn decode(headers: &HeaderMap, body: Bytes, max: usize) -> Result<Bytes, Refused> {
    let coding = match headers.get(header::CONTENT_ENCODING) {
        None => return Ok(body),
        Some(value) => value
            .to_str()
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default(),
    };
    let decoded = match coding.as_str() {
        "" | "identity" => return Ok(body),
        "gzip" | "x-gzip" => read_at_most(flate2::read::MultiGzDecoder::new(&body[..]), max),
        // HTTP's "deflate" is zlib (RFC 1950); some senders send raw deflate (RFC 1951).
        "deflate" => match read_at_most(flate2::read::ZlibDecoder::new(&body[..]), max) {
            Err(Refused {
                reason: DecodeRefusal::Corrupt,
                ..
            }) => read_at_most(flate2::read::DeflateDecoder::new(&body[..]), max),
            other => other,
        },
        "zstd" => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(&body[..])
                .map_err(|e| corrupt("zstd", &e))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| corrupt("zstd", &e))?;
            read_at_most(decoder, max)
        }
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(Refused {
                reason: DecodeRefusal::UnsupportedEncoding,
                error: AppError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    Code::BadBody,
                    format!("Content-Encoding {shown:?} is not supported; send {SUPPORTED}"),
                ),
            });
        }
    };
    decoded.map(Bytes::from).map_err(|r| match r.reason {
        DecodeRefusal::Corrupt => corrupt(&coding, &r.error.error.message),
        _ => r,
    })
}

/// Read `reader` to its end, unless it gives more than `max` bytes.
fn read_at_most(reader: impl Read, max: usize) -> Result<Vec<u8>, Refused> {
    let mut out = Vec::new();
    let read = reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Refused {
            reason: DecodeRefusal::Corrupt,
            error: AppError::new(StatusCode::BAD_REQUEST, Code::BadBody, e.to_string()),
        })?;
    if read > max {
        return Err(Refused {
            reason: DecodeRefusal::TooLarge,
            error: AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::PayloadTooLarge,
                format!("the body decodes to more than max_body_bytes ({max} bytes)"),
            ),
        });
    }
    Ok(out)
}

fn corrupt(coding: &str, why: &dyn std::fmt::Display) -> Refused {
    Refused {
        reason: DecodeRefusal::Corrupt,
        error: AppError::new(
            StatusCode::BAD_REQUEST,
            Code::BadBody,
            format!("the body is not valid {coding}: {why}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn headers(coding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, coding.parse().unwrap());
        h
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn each_encoding_decodes_to_the_same_body() {
        let body = br#"{"deviceId":"d","message":"hello"}"#.repeat(20);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zlib.write_all(&body).unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&body).unwrap();
        let zstd = zstd::stream::encode_all(&body[..], 3).unwrap();
        for (coding, sent) in [
            ("gzip", gzip(&body)),
            ("GZIP", gzip(&body)),
            ("deflate", zlib.finish().unwrap()),
            ("deflate", raw.finish().unwrap()),
            ("zstd", zstd),
            ("identity", body.clone()),
        ] {
            let got = decode(&headers(coding), Bytes::from(sent), 1 << 20)
                .unwrap_or_else(|r| panic!("{coding}: {:?}", r.reason));
            assert_eq!(&got[..], &body[..], "{coding}");
        }
        let plain = decode(&HeaderMap::new(), Bytes::from(body.clone()), 10).unwrap();
        assert_eq!(&plain[..], &body[..], "no encoding: as sent");
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_bad_bodies_are_named() {
        // 64 MiB of zeros, about 64 KB compressed.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 64 << 20]).unwrap();
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        let r = decode(&headers("gzip"), Bytes::from(bomb), 1 << 20)
            .err()
            .unwrap();
        assert_eq!(r.reason, DecodeRefusal::TooLarge);
        assert_eq!(r.error.status, StatusCode::PAYLOAD_TOO_LARGE);
        let r = decode(&headers("gzip"), Bytes::from_static(b"not gzip"), 100)
            .err()
            .unwrap();
        assert_eq!(r.reason, DecodeRefusal::Corrupt);
        assert!(
            r.error.error.message.contains("not valid gzip"),
            "{}",
            r.error.error.message
        );
        let r = decode(&headers("br"), Bytes::new(), 100).err().unwrap();
        assert_eq!(r.reason, DecodeRefusal::UnsupportedEncoding);
        assert_eq!(r.error.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(r.error.error.message.contains("gzip, deflate, zstd"));
        // A zstd frame that asks for a window past the bound is refused, not allocated.
        let mut big_window = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        big_window.window_log(27).unwrap();
        big_window.write_all(&vec![7u8; 1 << 20]).unwrap();
        let sent = big_window.finish().unwrap();
        let r = decode(&headers("zstd"), Bytes::from(sent), 64 << 20)
            .err()
            .unwrap();
        assert_eq!(r.reason, DecodeRefusal::Corrupt);
    }
}
