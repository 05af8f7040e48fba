//! One frame of a segment file: the logs of one publish, written whole or not at all.
//!
//! ```text
//! len    u32 LE   bytes after the 8-byte head
//! crc    u32 LE   CRC-32 (IEEE) of those bytes
//! seq    u64 LE   the first log's sequence number; the others follow it
//! ms     u64 LE   when it was written (Unix ms): retention by age
//! count  u32 LE
//! klen   u16 LE   then the publish's idempotency key (0 bytes: none)
//! count × (u32 LE length, the log's JSON as clients receive it)
//! ```
//!
//! A publish is one frame so that a crash in the middle of writing it loses all of it (the
//! checksum fails), never part: a client retrying the publish then sends it whole again and
//! no log lands twice. The key is kept so that a retry after a restart is still recognised.

/// Bytes before a frame's body.
pub const HEAD: usize = 8;

/// The largest body a frame may have; a longer `len` is corruption, not a frame.
pub const MAX_BODY: usize = 256 << 20;

/// A frame as read back.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub seq: u64,
    pub unix_ms: u64,
    pub key: &'a str,
    /// The logs' JSON, in order.
    pub logs: Vec<&'a [u8]>,
}

/// Append the frame of `logs` (first sequence number `seq`) to `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, unix_ms: u64, key: &str, logs: &[&[u8]]) {
    let start = out.len();
    out.extend_from_slice(&[0; HEAD]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&unix_ms.to_le_bytes());
    out.extend_from_slice(&(logs.len() as u32).to_le_bytes());
    // Keys are bounded far below 64 KiB where they are accepted (publish_key).
    let key = &key.as_bytes()[..key.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    for log in logs {
        out.extend_from_slice(&(log.len() as u32).to_le_bytes());
        out.extend_from_slice(log);
    }
    let body_len = (out.len() - start - HEAD) as u32;
    let crc = crc32fast::hash(&out[start + HEAD..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes are not a frame.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Bad {
    /// Fewer bytes than the frame says it has: a write cut short.
    Short,
    /// A length of zero or past [`MAX_BODY`] (zeroes, or garbage).
    Length,
    /// The checksum does not match.
    Checksum,
    /// The checksum matches but the body does not parse (a bug, or a collision).
    Body,
}

impl Bad {
    pub fn as_str(self) -> &'static str {
        match self {
            Bad::Short => "a frame cut short",
            Bad::Length => "an impossible frame length",
            Bad::Checksum => "a checksum mismatch",
            Bad::Body => "a frame that does not parse",
        }
    }
}

/// The body length a head announces, if it is possible.
pub fn body_len(head: &[u8; HEAD]) -> Result<usize, Bad> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_BODY {
        return Err(Bad::Length);
    }
    Ok(len)
}

/// Check and parse a frame from its head and body.
pub fn decode<'a>(head: &[u8; HEAD], body: &'a [u8]) -> Result<Frame<'a>, Bad> {
    let len = body_len(head)?;
    if body.len() < len {
        return Err(Bad::Short);
    }
    let body = &body[..len];
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if crc32fast::hash(body) != crc {
        return Err(Bad::Checksum);
    }
    parse(body).ok_or(Bad::Body)
}

fn parse(body: &[u8]) -> Option<Frame<'_>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let bytes = body.get(at..at.checked_add(n)?)?;
        at += n;
        Some(bytes)
    };
    let seq = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let unix_ms = u64::from_le_bytes(take(8)?.try_into().ok()?);
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let klen = u16::from_le_bytes(take(2)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(take(klen)?).ok()?;
    // Each log takes at least its 4-byte length: a count past that is not believed.
    let mut logs = Vec::with_capacity(count.min(body.len() / 4));
    for _ in 0..count {
        let n = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        logs.push(take(n)?);
    }
    (at == body.len()).then_some(Frame {
        seq,
        unix_ms,
        key,
        logs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(bytes: &[u8]) -> ([u8; HEAD], &[u8]) {
        (bytes[..HEAD].try_into().unwrap(), &bytes[HEAD..])
    }

    #[test]
    fn a_frame_reads_back_as_written() {
        let mut out = Vec::new();
        encode(
            &mut out,
            41,
            1_700_000_000_000,
            "k-1",
            &[b"{\"a\":1}", b"{}"],
        );
        let (head, body) = split(&out);
        assert_eq!(
            decode(&head, body).unwrap(),
            Frame {
                seq: 41,
                unix_ms: 1_700_000_000_000,
                key: "k-1",
                logs: vec![b"{\"a\":1}".as_slice(), b"{}".as_slice()],
            }
        );
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_refused() {
        let mut out = Vec::new();
        encode(&mut out, 7, 1, "", &[b"{\"message\":\"hello\"}"]);
        for cut in HEAD..out.len() {
            let (head, body) = split(&out[..cut.max(HEAD)]);
            assert_eq!(decode(&head, body), Err(Bad::Short), "cut at {cut}");
        }
        for i in 0..out.len() {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[i] ^= 1 << bit;
                let (head, body) = split(&bad);
                assert!(decode(&head, body).is_err(), "byte {i} bit {bit}");
            }
        }
        let zeroes = [0u8; 64];
        let (head, body) = split(&zeroes);
        assert_eq!(decode(&head, body), Err(Bad::Length));
    }
}
