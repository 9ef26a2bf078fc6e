//! A chunked transfer-coding tracker (RFC 9112 §7.1): bytes pass through unchanged while it
//! follows the chunk boundaries, so the proxy knows where a chunked body ends, how much payload
//! it carried, and refuses a malformed one. Pure: no I/O.

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    /// A size line, delimiter or trailer is not what the grammar allows.
    #[error("malformed chunked encoding")]
    Malformed,
    /// A chunk size, chunk extension or the trailer section is unreasonably large.
    #[error("chunked encoding field too large")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size { digits: u8, value: u64 },
    /// Whitespace after the size: only more of it, `;` or the CR may follow.
    SizeWs { value: u64 },
    /// Skipping a chunk extension up to the CR.
    Ext { len: u16, value: u64 },
    /// Expecting the LF that ends a size line.
    SizeLf { value: u64 },
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line: CR ends the body, else a field name begins.
    TrailerStart,
    /// In a trailer field's name (a token), up to its colon.
    TrailerName,
    /// In a trailer field's value, up to the CR.
    TrailerValue,
    /// Expecting the LF of a trailer field line.
    TrailerLf,
    /// Expecting the LF of the empty line that ends the body.
    EndLf,
    /// The body is complete.
    Done,
}

/// Longest chunk extension and trailer section accepted.
const MAX_EXT: u16 = 4096;
const MAX_TRAILER: u32 = 16 << 10;

/// Follows one chunked body.
#[derive(Debug, Clone)]
pub(crate) struct Chunked {
    state: State,
    payload: u64,
    trailer: u32,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size {
                digits: 0,
                value: 0,
            },
            payload: 0,
            trailer: 0,
        }
    }
}

impl Chunked {
    /// Whether the last chunk and the trailer section have passed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes seen so far (chunk data, without the framing).
    pub fn payload(&self) -> u64 {
        self.payload
    }

    /// Follows `bytes`, returning how many of them belong to this body (all of them unless
    /// the body ends inside `bytes`).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.payload += take;
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data(left - take)
                    };
                    continue;
                }
                State::Size { digits, value } => match hex(b) {
                    Some(d) if digits < 16 => State::Size {
                        digits: digits + 1,
                        value: (value << 4) | u64::from(d),
                    },
                    Some(_) => return Err(ChunkError::TooLarge),
                    None if digits == 0 => return Err(ChunkError::Malformed),
                    None => match b {
                        b'\r' => State::SizeLf { value },
                        b';' => State::Ext { len: 0, value },
                        b' ' | b'\t' => State::SizeWs { value },
                        _ => return Err(ChunkError::Malformed),
                    },
                },
                State::SizeWs { value } => match b {
                    b' ' | b'\t' => State::SizeWs { value },
                    b';' => State::Ext { len: 0, value },
                    b'\r' => State::SizeLf { value },
                    _ => return Err(ChunkError::Malformed),
                },
                State::Ext { len, value } => match b {
                    b'\r' => State::SizeLf { value },
                    b'\n' => return Err(ChunkError::Malformed),
                    _ if len >= MAX_EXT => return Err(ChunkError::TooLarge),
                    _ => State::Ext {
                        len: len + 1,
                        value,
                    },
                },
                State::SizeLf { value } => match (b, value) {
                    (b'\n', 0) => State::TrailerStart,
                    (b'\n', n) => State::Data(n),
                    _ => return Err(ChunkError::Malformed),
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return Err(ChunkError::Malformed),
                },
                State::DataLf => match b {
                    b'\n' => State::Size {
                        digits: 0,
                        value: 0,
                    },
                    _ => return Err(ChunkError::Malformed),
                },
                State::TrailerStart | State::TrailerName | State::TrailerValue => {
                    self.trailer += 1;
                    if self.trailer > MAX_TRAILER {
                        return Err(ChunkError::TooLarge);
                    }
                    match (self.state, b) {
                        (State::TrailerStart, b'\r') => State::EndLf,
                        (State::TrailerStart | State::TrailerName, b) if is_tchar(b) => {
                            State::TrailerName
                        }
                        (State::TrailerName, b':') => State::TrailerValue,
                        (State::TrailerValue, b'\r') => State::TrailerLf,
                        (State::TrailerValue, b'\n') => return Err(ChunkError::Malformed),
                        (State::TrailerValue, _) => State::TrailerValue,
                        _ => return Err(ChunkError::Malformed),
                    }
                }
                State::TrailerLf => match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkError::Malformed),
                },
                State::EndLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(ChunkError::Malformed),
                },
            };
            i += 1;
        }
        Ok(i)
    }
}

/// A token character (RFC 9110 §5.6.2), as field names are made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `data` as one chunk (nothing for empty data, which would end the body).
pub(crate) fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with no trailer.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parts: &[&[u8]]) -> (Result<usize, ChunkError>, Chunked) {
        let mut c = Chunked::default();
        let mut total = 0;
        for p in parts {
            match c.feed(p) {
                Ok(n) => total += n,
                Err(e) => return (Err(e), c),
            }
        }
        (Ok(total), c)
    }

    #[test]
    fn whole_body_in_one_piece_and_byte_by_byte() {
        let body = b"5\r\nhello\r\n6 ;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (n, c) = run(&[body]);
        assert_eq!(n, Ok(body.len() - 4));
        assert!(c.is_done());
        assert_eq!(c.payload(), 11);
        let bytes: Vec<&[u8]> = body[..body.len() - 4].chunks(1).collect();
        let (n, c) = run(&bytes);
        assert_eq!(n, Ok(body.len() - 4));
        assert!(c.is_done());
    }

    #[test]
    fn unfinished_body_is_not_done() {
        let (n, c) = run(&[b"a\r\n01234"]);
        assert_eq!(n, Ok(8));
        assert!(!c.is_done());
        assert_eq!(c.payload(), 5);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n",
            b"5 6\r\nhello\r\n",
            b"0\r\nGET /x HTTP/1.1\r\n\r\n",
            b"0\r\n: no name\r\n\r\n",
        ] {
            assert_eq!(run(&[bad]).0, Err(ChunkError::Malformed), "{bad:?}");
        }
        assert_eq!(
            run(&[b"11111111111111111\r\n"]).0,
            Err(ChunkError::TooLarge)
        );
    }

    #[test]
    fn encoding_round_trips() {
        let mut out = Vec::new();
        encode_chunk(b"hello world", &mut out);
        encode_chunk(b"", &mut out);
        out.extend_from_slice(LAST_CHUNK);
        let (n, c) = run(&[&out]);
        assert_eq!(n, Ok(out.len()));
        assert!(c.is_done());
        assert_eq!(c.payload(), 11);
    }
}
