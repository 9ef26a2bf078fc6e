//! Reading what a process prints, line by line, without letting it grow the platform's
//! memory: a line longer than [`MAX_LINE`] is cut into pieces of that length (a process that
//! prints forever without a newline once grew one string in `mar serve` until the OOM killer
//! took the platform), and bytes that are not UTF-8 are replaced rather than ending the stream.

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Longest line kept whole, in bytes.
pub const MAX_LINE: usize = 8 << 10;

/// Calls `f` with every line of `stream` (without its line end) until it ends or fails.
pub async fn for_each_line<R: AsyncRead + Unpin>(stream: R, mut f: impl FnMut(String)) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        f(String::from_utf8_lossy(&buf).into_owned());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_bad_bytes_replaced() {
        let mut input = b"first\r\nsecond\n".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_LINE * 2 + 10));
        input.extend(b"\n\xffend");
        let mut lines = Vec::new();
        for_each_line(&input[..], |l| lines.push(l)).await;
        assert_eq!(lines[0], "first");
        assert_eq!(lines[1], "second");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3].len(), MAX_LINE);
        assert_eq!(lines[4], "a".repeat(10));
        assert_eq!(lines[5], "\u{fffd}end");
        assert_eq!(lines.len(), 6);
    }
}
