//! A minimal wire-protocol client for tests (SCRAM login, simple and extended messages, COPY, a message reader),
//! for what tokio-postgres cannot do without the `futures` crate: reading a result row by row, walking away in the
//! middle of it, sending a cancel with the key the proxy handed out, and observing replies byte by byte.

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    /// The cancel key shardpool gave this connection (BackendKeyData).
    pub key: (i32, i32),
}

/// The columns of a DataRow body.
pub fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut b = body;
    let n = b.get_i16();
    (0..n)
        .map(|_| {
            let len = b.get_i32();
            if len < 0 {
                return None;
            }
            let v = String::from_utf8_lossy(&b[..len as usize]).into_owned();
            b.advance(len as usize);
            Some(v)
        })
        .collect()
}

/// A server message as text: tag and, where it matters, content (error code, row values, command tag).
pub fn render(tag: u8, body: &[u8]) -> String {
    let t = tag as char;
    match tag {
        b'E' | b'N' => {
            let code = body
                .split(|b| *b == 0)
                .find(|f| f.first() == Some(&b'C'))
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .unwrap_or_default();
            format!("{t}:{code}")
        }
        b'D' => format!("{t}:{:?}", data_row(body)),
        b'C' => format!("{t}:{}", String::from_utf8_lossy(&body[..body.len() - 1])),
        b'Z' => format!("{t}:{}", body[0] as char),
        _ => t.to_string(),
    }
}

impl Raw {
    pub async fn connect(port: u16, user: &str, password: &str, db: &str) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            key: (0, 0),
        };
        let mut body = BytesMut::new();
        body.put_i32(196_608);
        for s in ["user", user, "database", db] {
            body.put_slice(s.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut pkt = BytesMut::new();
        pkt.put_i32(body.len() as i32 + 4);
        pkt.put_slice(&body);
        raw.stream.write_all(&pkt).await.unwrap();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = raw.next().await;
            match tag {
                b'R' => match body.get_i32() {
                    0 => {}
                    10 => {
                        let s =
                            ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                        let mut p = BytesMut::new();
                        p.put_slice(b"SCRAM-SHA-256\0");
                        p.put_i32(s.message().len() as i32);
                        p.put_slice(s.message());
                        raw.send(b'p', &p).await;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram.as_mut().unwrap();
                        s.update(&body).unwrap();
                        let m = s.message().to_vec();
                        raw.send(b'p', &m).await;
                    }
                    12 => scram.as_mut().unwrap().finish(&body).unwrap(),
                    other => panic!("unexpected authentication request {other}"),
                },
                b'E' => panic!("login failed: {body:?}"),
                b'K' => raw.key = (body.get_i32(), body.get_i32()),
                b'Z' => return raw,
                _ => {}
            }
        }
    }

    pub async fn send(&mut self, tag: u8, body: &[u8]) {
        let mut m = BytesMut::new();
        m.put_u8(tag);
        m.put_i32(body.len() as i32 + 4);
        m.put_slice(body);
        self.stream.write_all(&m).await.unwrap();
    }

    /// Writes `bytes` as they are: a message cut short, or a header that lies about its length.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Writes bytes as they are (several messages at once); a peer that already hung up is not an error here.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Writes `bytes`, reporting a peer that hung up instead of failing.
    pub async fn try_send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    pub async fn send_query(&mut self, sql: &str) {
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        self.send(b'Q', &q).await;
    }

    pub async fn parse(&mut self, name: &str, sql: &str) {
        let mut b = BytesMut::new();
        for s in [name, sql] {
            b.put_slice(s.as_bytes());
            b.put_u8(0);
        }
        b.put_i16(0);
        self.send(b'P', &b).await;
    }

    /// Bind of `statement` to the unnamed portal (no parameters, text results), then Execute it.
    pub async fn bind_execute(&mut self, statement: &str) {
        let mut b = BytesMut::new();
        b.put_u8(0);
        b.put_slice(statement.as_bytes());
        b.put_u8(0);
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
        self.send(b'B', &b).await;
        self.send(b'E', b"\0\0\0\0\0").await;
    }

    pub async fn close_statement(&mut self, name: &str) {
        let mut b = vec![b'S'];
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        self.send(b'C', &b).await;
    }

    pub async fn sync(&mut self) {
        self.send(b'S', b"").await;
    }

    /// Waits until a complete reply (ending in ReadyForQuery, idle-in-transaction) sits unread in the socket.
    pub async fn wait_for_unread_ready(&mut self) {
        assert!(self.buf.is_empty());
        let mut peeked = vec![0u8; 4096];
        loop {
            let n = self.stream.peek(&mut peeked).await.unwrap();
            assert!(n > 0, "connection closed");
            if peeked[..n].ends_with(b"Z\0\0\0\x05T") {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    pub async fn next(&mut self) -> (u8, BytesMut) {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let mut frame = self.buf.split_to(len + 1);
                    let tag = frame[0];
                    frame.advance(5);
                    return (tag, frame);
                }
            }
            let n = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    /// Every message up to and including the next ReadyForQuery, rendered.
    pub async fn replies(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let (tag, body) = self.next().await;
            out.push(render(tag, &body));
            if tag == b'Z' {
                return out;
            }
        }
    }

    /// Runs a simple query and returns the first column of each row.
    pub async fn query(&mut self, sql: &str) -> Vec<String> {
        self.send_query(sql).await;
        let mut rows = Vec::new();
        loop {
            let (tag, body) = self.next().await;
            match tag {
                b'D' => rows.push(data_row(&body)[0].clone().unwrap_or_default()),
                b'E' => panic!("query {sql:?} failed: {}", render(tag, &body)),
                b'Z' => return rows,
                _ => {}
            }
        }
    }

    /// COPY ... TO STDOUT: the concatenated CopyData payloads.
    pub async fn copy_out(&mut self, sql: &str) -> Vec<u8> {
        self.send_query(sql).await;
        let mut data = Vec::new();
        loop {
            let (tag, body) = self.next().await;
            match tag {
                b'H' | b'c' | b'C' => {}
                b'd' => data.extend_from_slice(&body),
                b'Z' => return data,
                other => panic!("unexpected {}", render(other, &body)),
            }
        }
    }

    /// COPY ... FROM STDIN with `data` sent in CopyData messages of `chunk` bytes; returns the command tag.
    pub async fn copy_in(&mut self, sql: &str, data: &[u8], chunk: usize) -> String {
        self.send_query(sql).await;
        let (tag, body) = self.next().await;
        assert_eq!(tag, b'G', "{}", render(tag, &body));
        for part in data.chunks(chunk) {
            self.send(b'd', part).await;
        }
        self.send(b'c', b"").await;
        let mut command = String::new();
        loop {
            let (tag, body) = self.next().await;
            match tag {
                b'C' => command = render(tag, &body)[2..].to_owned(),
                b'Z' => return command,
                other => panic!("unexpected {}", render(other, &body)),
            }
        }
    }

    /// COPY ... FROM STDIN, some data, then CopyFail: the replies.
    pub async fn copy_fail(&mut self, sql: &str, data: &[u8]) -> Vec<String> {
        self.send_query(sql).await;
        let (tag, body) = self.next().await;
        assert_eq!(tag, b'G', "{}", render(tag, &body));
        self.send(b'd', data).await;
        self.send(b'f', b"client gave up\0").await;
        self.replies().await
    }

    /// Reads until the proxy closes the connection; returns the ErrorResponses seen on the way, rendered (rows and
    /// other messages are read and dropped, so a large unread result does not pile up here).
    pub async fn errors_until_closed(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        loop {
            while self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() <= len {
                    break;
                }
                let mut frame = self.buf.split_to(len + 1);
                let tag = frame[0];
                frame.advance(5);
                if tag == b'E' {
                    errors.push(render(tag, &frame));
                }
            }
            self.buf.reserve(64 * 1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return errors,
                Ok(_) => {}
            }
        }
    }
}
