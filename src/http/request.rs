//! Reading one HTTP/1.x request head, bounded in size: the listener answers GETs of a few paths, so the request
//! line is all it needs; headers are read (to find the end of the head) and ignored, bodies never read.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The whole request head (request line and headers) at most; a longer one gets 431.
pub const MAX_HEAD: usize = 8 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed request line")]
    Malformed,
    #[error("HTTP version not supported")]
    Version,
    #[error("connection closed before the request was complete")]
    Closed,
}

/// Reads until the blank line ending the head (CRLF CRLF, or bare LF LF as lenient servers accept).
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<Request, HeadError> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(HeadError::TooLarge);
        }
        let n = r
            .read(&mut buf[len..])
            .await
            .map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // Only the new bytes (and the 3 before them) can complete the terminator.
        let from = len.saturating_sub(3);
        len += n;
        if let Some(end) = head_end(&buf[from..len]) {
            return parse(&buf[..from + end]);
        }
    }
}

fn head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = b.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses the request line of a complete head.
pub fn parse(head: &[u8]) -> Result<Request, HeadError> {
    let line_end = head.iter().position(|&c| c == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let line = std::str::from_utf8(line).map_err(|_| HeadError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if method.is_empty() || !method.bytes().all(|c| c.is_ascii_uppercase()) {
        return Err(HeadError::Malformed);
    }
    if !target.starts_with('/') {
        return Err(HeadError::Malformed);
    }
    if !version.starts_with("HTTP/1.") {
        return Err(HeadError::Version);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(m: &str, p: &str) -> Result<Request, HeadError> {
        Ok(Request {
            method: m.into(),
            path: p.into(),
        })
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            req("GET", "/metrics")
        );
        assert_eq!(
            parse(b"HEAD /readyz?verbose=1 HTTP/1.0"),
            req("HEAD", "/readyz")
        );
        assert_eq!(parse(b"GET /metrics HTTP/2.0"), Err(HeadError::Version));
        assert_eq!(parse(b"GET metrics HTTP/1.1"), Err(HeadError::Malformed));
        assert_eq!(parse(b"GET  /metrics HTTP/1.1"), Err(HeadError::Malformed));
        assert_eq!(parse(b"get /metrics HTTP/1.1"), Err(HeadError::Malformed));
        assert_eq!(parse(b"\xff /metrics HTTP/1.1"), Err(HeadError::Malformed));
        assert_eq!(parse(b""), Err(HeadError::Malformed));
    }

    #[tokio::test]
    async fn heads_end_at_the_blank_line_even_split_across_reads() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move { read_head(&mut b).await });
        use tokio::io::AsyncWriteExt;
        for part in [&b"GET /healthz HTTP/1.1\r\nHost: a\r"[..], b"\n\r", b"\n"] {
            a.write_all(part).await.unwrap();
            a.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(reader.await.unwrap(), req("GET", "/healthz"));
    }

    #[tokio::test]
    async fn oversize_and_truncated_heads_are_refused() {
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(read_head(&mut &big[..]).await, Err(HeadError::TooLarge));
        assert_eq!(
            read_head(&mut &b"GET / HTTP/1.1\r\n"[..]).await,
            Err(HeadError::Closed)
        );
    }
}
