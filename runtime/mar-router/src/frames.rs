//! Tracking WebSocket frame boundaries in a relayed byte stream, without decoding payloads.
//!
//! The router relays WebSocket bytes as they are (re-encoding every frame would cost far more
//! CPU), but it must know when a frame passes (to reset the idle timer), when the stream sits
//! between frames (the only place it may inject a Close or a Ping), and how large frames and
//! messages get (to enforce limits). `FrameTracker::feed` does exactly that, for one direction.
//!
//! Invariant: pure; no I/O.

/// What a chunk of bytes contained.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Frames whose header was completed in this chunk.
    pub frames: usize,
    /// A Close frame's header was among them.
    pub close: bool,
}

/// Why the stream is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A frame longer than the limit.
    FrameTooLarge,
    /// A message (all fragments) longer than the limit.
    MessageTooLarge,
    /// Masking is wrong for the direction (clients must mask, servers must not), or the
    /// header is malformed (reserved opcode, oversized control frame).
    Protocol,
}

impl Violation {
    /// The Close code to send (RFC 6455 §7.4.1).
    pub fn close_code(self) -> u16 {
        match self {
            Violation::FrameTooLarge | Violation::MessageTooLarge => 1009,
            Violation::Protocol => 1002,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting a header: `have` bytes of at most 14 so far.
    Header { buf: [u8; 14], have: usize },
    /// Inside a payload with this many bytes to go.
    Payload { remaining: u64 },
}

/// Frame boundaries of one direction of a WebSocket.
#[derive(Debug, Clone)]
pub struct FrameTracker {
    state: State,
    masked: bool,
    max_frame: u64,
    max_message: u64,
    message: u64,
}

impl FrameTracker {
    /// A tracker for frames that must (`masked`, client to server) or must not be masked.
    pub fn new(masked: bool, max_frame: u64, max_message: u64) -> Self {
        Self {
            state: State::Header {
                buf: [0; 14],
                have: 0,
            },
            masked,
            max_frame,
            max_message,
            message: 0,
        }
    }

    /// Whether the stream sits between two frames, where a new frame may be injected.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// Consumes relayed bytes.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Seen, Violation> {
        let mut seen = Seen::default();
        while !data.is_empty() {
            match &mut self.state {
                State::Payload { remaining } => {
                    let take = (*remaining).min(data.len() as u64);
                    *remaining -= take;
                    data = &data[take as usize..];
                    if *remaining == 0 {
                        self.state = State::Header {
                            buf: [0; 14],
                            have: 0,
                        };
                    }
                }
                State::Header { buf, have } => {
                    let need = header_len(&buf[..*have]);
                    let take = (need - *have).min(data.len());
                    buf[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    // The length bytes may have told us the header is longer than we thought.
                    if *have < header_len(&buf[..*have]) {
                        continue;
                    }
                    let (opcode, fin, masked, len) = parse(&buf[..*have]);
                    if masked != self.masked || matches!(opcode, 3..=7 | 0xB..=0xF) {
                        return Err(Violation::Protocol);
                    }
                    let control = opcode >= 8;
                    if control && (len > 125 || !fin) {
                        return Err(Violation::Protocol);
                    }
                    if len > self.max_frame {
                        return Err(Violation::FrameTooLarge);
                    }
                    if !control {
                        // A new message starts with a non-continuation frame.
                        if opcode != 0 {
                            self.message = 0;
                        }
                        self.message += len;
                        if self.message > self.max_message {
                            return Err(Violation::MessageTooLarge);
                        }
                    }
                    seen.frames += 1;
                    seen.close |= opcode == 8;
                    self.state = if len == 0 {
                        State::Header {
                            buf: [0; 14],
                            have: 0,
                        }
                    } else {
                        State::Payload { remaining: len }
                    };
                }
            }
        }
        Ok(seen)
    }
}

/// Header length implied by the bytes so far (at least 2).
fn header_len(h: &[u8]) -> usize {
    if h.len() < 2 {
        return 2;
    }
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    match h[1] & 0x7F {
        126 => 4 + mask,
        127 => 10 + mask,
        _ => 2 + mask,
    }
}

fn parse(h: &[u8]) -> (u8, bool, bool, u64) {
    let opcode = h[0] & 0x0F;
    let fin = h[0] & 0x80 != 0;
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
        n => u64::from(n),
    };
    (opcode, fin, masked, len)
}

/// A Close frame with `code` and `reason`, masked when it goes to the server (as a client's
/// frames must be). The mask need not be secret here: it exists against cache poisoning by
/// browser scripts, and this frame comes from the router, not from a script.
pub fn close_frame(code: u16, reason: &str, masked: bool) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    control_frame(0x8, &payload, masked)
}

/// A Ping frame.
pub fn ping_frame(payload: &[u8], masked: bool) -> Vec<u8> {
    control_frame(0x9, &payload[..payload.len().min(125)], masked)
}

fn control_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    if masked {
        let key = [0x6d, 0x61, 0x72, 0x21];
        f.push(0x80 | payload.len() as u8);
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.push(payload.len() as u8);
        f.extend_from_slice(payload);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        if len < 126 {
            f.push(m | len as u8);
        } else if len < 65536 {
            f.push(m | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn counts_frames_split_at_every_byte() {
        let mut stream = frame(1, true, true, 5);
        stream.extend(frame(2, true, true, 300));
        stream.extend(frame(9, true, true, 0));
        stream.extend(frame(1, true, true, 70_000));
        stream.extend(frame(8, true, true, 2));
        for chunk in [1, 2, 3, 7, 100, stream.len()] {
            let mut t = FrameTracker::new(true, 1 << 20, 1 << 20);
            let mut total = Seen::default();
            for c in stream.chunks(chunk) {
                let s = t.feed(c).unwrap();
                total.frames += s.frames;
                total.close |= s.close;
            }
            assert_eq!(total.frames, 5, "chunk {chunk}");
            assert!(total.close);
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn boundary_is_only_between_frames() {
        let mut t = FrameTracker::new(false, 1 << 20, 1 << 20);
        let f = frame(1, true, false, 10);
        t.feed(&f[..5]).unwrap();
        assert!(!t.at_boundary());
        t.feed(&f[5..]).unwrap();
        assert!(t.at_boundary());
    }

    #[test]
    fn limits_and_protocol_errors() {
        let mut t = FrameTracker::new(true, 1000, 1500);
        assert_eq!(
            t.feed(&frame(2, true, true, 1001)),
            Err(Violation::FrameTooLarge)
        );
        let mut t = FrameTracker::new(true, 1000, 1500);
        t.feed(&frame(1, false, true, 1000)).unwrap();
        assert_eq!(
            t.feed(&frame(0, true, true, 600)),
            Err(Violation::MessageTooLarge)
        );
        let mut t = FrameTracker::new(true, 1000, 1500);
        assert_eq!(
            t.feed(&frame(1, true, false, 3)),
            Err(Violation::Protocol),
            "unmasked from a client"
        );
        let mut t = FrameTracker::new(false, 1000, 1500);
        assert_eq!(
            t.feed(&frame(9, false, false, 3)),
            Err(Violation::Protocol),
            "fragmented ping"
        );
        let mut t = FrameTracker::new(false, 1000, 1500);
        assert_eq!(
            t.feed(&frame(3, true, false, 3)),
            Err(Violation::Protocol),
            "reserved opcode"
        );
    }

    #[test]
    fn injected_frames_parse() {
        let mut t = FrameTracker::new(true, 1 << 20, 1 << 20);
        let s = t.feed(&close_frame(1001, "idle timeout", true)).unwrap();
        assert_eq!((s.frames, s.close), (1, true));
        let mut t = FrameTracker::new(false, 1 << 20, 1 << 20);
        assert_eq!(t.feed(&ping_frame(b"mar", false)).unwrap().frames, 1);
        assert_eq!(close_frame(1000, "", false), vec![0x88, 2, 0x03, 0xE8]);
    }
}
