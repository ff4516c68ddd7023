//! HTTP/1.1 requests read under limits, and responses written (spec H1-H8
//! in the [module doc](super)). `#![forbid(unsafe_code)]` territory: a
//! request is outside bytes; every length is checked against a constant
//! maximum before it is used, and nothing is allocated from a length the
//! client sent beyond [`Limits::max_body_bytes`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What one request may send, and how long it may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line and headers together, terminator included.
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// From the first byte of a request to the last of its body (H5).
    pub deadline: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 << 10,
            max_headers: 64,
            max_body_bytes: 1 << 20,
            deadline: Duration::from_secs(10),
            idle: Duration::from_secs(10),
        }
    }
}

/// A request as read: method, path (query dropped), headers, body.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may carry another request (H7).
    pub keep_alive: bool,
}

impl Request {
    /// The value of header `name` (lowercase), the first if repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum HttpError {
    /// The connection closed (or stayed idle) before a request began: no answer is due.
    Idle,
    /// Reading or writing the socket failed.
    Io(io::Error),
    /// The request did not arrive within the deadline (H5).
    Timeout,
    /// Request line and headers over `max` bytes (H2).
    HeadTooLarge { max: usize },
    /// More than `max` header lines (H2).
    TooManyHeaders { max: usize },
    /// A request line or header that is not HTTP/1.x (H1, H3).
    Malformed(&'static str),
    /// A body over `max` bytes (H4).
    BodyTooLarge { len: u64, max: usize },
    /// A body without Content-Length (chunked bodies are refused, H4).
    LengthRequired,
}

impl HttpError {
    /// The status answering this error; `None` when no answer is due.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Idle | HttpError::Io(_) => None,
            HttpError::Timeout => Some(408),
            HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. } => Some(431),
            HttpError::Malformed(_) => Some(400),
            HttpError::BodyTooLarge { .. } => Some(413),
            HttpError::LengthRequired => Some(411),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Idle => write!(f, "connection closed before a request"),
            HttpError::Io(e) => write!(f, "socket: {e}"),
            HttpError::Timeout => write!(f, "the request did not arrive in time"),
            HttpError::HeadTooLarge { max } => {
                write!(f, "request line and headers exceed {max} bytes")
            }
            HttpError::TooManyHeaders { max } => write!(f, "more than {max} header lines"),
            HttpError::Malformed(what) => write!(f, "malformed request: {what}"),
            HttpError::BodyTooLarge { len, max } => {
                write!(f, "request body of {len} bytes exceeds {max} bytes")
            }
            HttpError::LengthRequired => {
                write!(
                    f,
                    "a request body needs Content-Length (chunked bodies are not accepted)"
                )
            }
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads one request from `stream`. `buf` carries bytes read past the
/// previous request on a kept-alive connection (pipelining) and keeps
/// those read past this one.
pub fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
) -> Result<Request, HttpError> {
    // Waiting for the first byte is idleness; from it on the deadline runs (H5).
    let mut started = (!buf.is_empty()).then(Instant::now);
    let idle_until = Instant::now() + limits.idle;
    let head_end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        // H2: the head is bounded before it is parsed.
        if buf.len() > limits.max_head_bytes {
            return Err(HttpError::HeadTooLarge {
                max: limits.max_head_bytes,
            });
        }
        let until = started.map_or(idle_until, |t| t + limits.deadline);
        let n = match read_some(stream, buf, until, limits.max_head_bytes + 4) {
            // An idle kept-alive connection closes without an answer.
            Err(HttpError::Timeout) if started.is_none() => return Err(HttpError::Idle),
            r => r?,
        };
        match (n, started) {
            (0, None) => return Err(HttpError::Idle),
            (0, Some(_)) => return Err(HttpError::Malformed("connection closed mid-request")),
            (_, None) => started = Some(Instant::now()),
            _ => {}
        }
    };
    if head_end > limits.max_head_bytes {
        return Err(HttpError::HeadTooLarge {
            max: limits.max_head_bytes,
        });
    }
    let head = std::str::from_utf8(&buf[..head_end - 4])
        .map_err(|_| HttpError::Malformed("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    // H1: `METHOD SP target SP HTTP/1.x`.
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(
            "request line is not METHOD TARGET VERSION",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("method is not an uppercase token"));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("target is not an absolute path"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(HttpError::Malformed("version is not HTTP/1.0 or HTTP/1.1")),
    };
    let mut headers = Vec::new();
    for l in lines {
        // H2: counted before it is kept.
        if headers.len() == limits.max_headers {
            return Err(HttpError::TooManyHeaders {
                max: limits.max_headers,
            });
        }
        // H3: `name: value`, a token name, no obsolete line folding.
        let Some((name, value)) = l.split_once(':') else {
            return Err(HttpError::Malformed("header line without ':'"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HttpError::Malformed("header name is not a token"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let (method, target) = (method.to_string(), target.to_string());
    let req_header = |n: &'static str| headers.iter().filter(move |(k, _)| k == n).map(|(_, v)| v);
    // H4: a body only with one Content-Length; Transfer-Encoding refused.
    if req_header("transfer-encoding").next().is_some() {
        return Err(HttpError::LengthRequired);
    }
    let mut lengths = req_header("content-length");
    let len: u64 = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some(v), None) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse()
            .map_err(|_| HttpError::Malformed("Content-Length out of range"))?,
        _ => {
            return Err(HttpError::Malformed(
                "Content-Length is not one decimal number",
            ))
        }
    };
    if len > limits.max_body_bytes as u64 {
        return Err(HttpError::BodyTooLarge {
            len,
            max: limits.max_body_bytes,
        });
    }
    let len = len as usize;
    // curl sends `Expect: 100-continue` before larger bodies and waits for
    // the interim answer (RFC 9110 §10.1.1) before it sends the body.
    let expects = req_header("expect").any(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects && len > 0 && buf.len() < head_end + len {
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(HttpError::Io)?;
    }
    let until = started.unwrap_or_else(Instant::now) + limits.deadline;
    while buf.len() < head_end + len {
        let want = head_end + len - buf.len();
        if read_some(stream, buf, until, want)? == 0 {
            return Err(HttpError::Malformed("connection closed mid-body"));
        }
    }
    let body = buf[head_end..head_end + len].to_vec();
    // H7: HTTP/1.1 keeps the connection unless told otherwise; 1.0 closes
    // unless asked to keep it.
    let connection = req_header("connection")
        .next()
        .map(|v| v.to_ascii_lowercase())
        .unwrap_or_default();
    let keep_alive = match http10 {
        false => !connection.contains("close"),
        true => connection.contains("keep-alive"),
    };
    let path = target.split('?').next().unwrap_or_default().to_string();
    buf.drain(..head_end + len);
    Ok(Request {
        method,
        path,
        headers,
        body,
        keep_alive,
    })
}

/// Reads what is there (at most `max` bytes) into `buf` before `until`;
/// 0 at end of stream.
fn read_some(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    until: Instant,
    max: usize,
) -> Result<usize, HttpError> {
    let mut chunk = [0u8; 8192];
    let want = max.clamp(1, chunk.len());
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(HttpError::Io)?;
        match stream.read(&mut chunk[..want]) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HttpError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HttpError::Io(e)),
        }
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The reason phrase of the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A whole response with a body (H6: Content-Length always set).
pub struct Response<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub keep_alive: bool,
    /// Extra header lines, each `Name: value`.
    pub extra: &'a [&'a str],
}

impl Response<'_> {
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len(),
            if self.keep_alive {
                "keep-alive"
            } else {
                "close"
            }
        );
        for h in self.extra {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes())?;
        w.write_all(self.body)?;
        w.flush()
    }
}

/// The head of a server-sent-events response (H8): its body runs until
/// the connection closes.
pub fn write_sse_head(w: &mut impl Write) -> io::Result<()> {
    w.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          Connection: close\r\nX-Accel-Buffering: no\r\n\r\n",
    )?;
    w.flush()
}

/// One server-sent event carrying `data` (one line of JSON, or `[DONE]`).
pub fn write_sse_event(w: &mut impl Write, data: &str) -> io::Result<()> {
    let mut event = Vec::with_capacity(data.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(data.as_bytes());
    event.extend_from_slice(b"\n\n");
    w.write_all(&event)?;
    w.flush()
}

/// Whether the client has closed its side of `stream` (end of stream or
/// an error on a non-blocking peek); bytes waiting (a pipelined request)
/// mean it is still there.
pub fn client_gone(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let gone = match stream.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    };
    gone || stream.set_nonblocking(false).is_err()
}
