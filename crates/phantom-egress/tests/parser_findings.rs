//! What fuzzing and reading the proxy's request parsers found, one test each, and the
//! promises the `http_head` and `socks5` fuzz targets check, on fixed inputs.

use std::io::{Cursor, Read, Write};

use phantom_egress::fuzzing::{
    parse_http, read_http, socks5_request, HeadError, HttpRequest, Socks5Ask, MAX_HEAD,
};

fn forwarded(head: &str) -> (String, u16, String) {
    match parse_http(head.as_bytes()) {
        Ok(Some((HttpRequest::Forward { host, port, head }, _))) => {
            (host, port, String::from_utf8(head).unwrap())
        }
        other => panic!("{head:?}: {other:?}"),
    }
}

/// The Host header of a plain-HTTP request was forwarded as the client wrote it, so a
/// payload allowed to reach one site could ask the same server (a CDN, a shared host)
/// for any other: `GET http://pypi.org/ HTTP/1.1` + `Host: evil.example`. A proxy
/// replaces Host with the request target's authority (RFC 9112 §3.2.2).
#[test]
fn a_forwarded_request_names_only_the_host_the_policy_allowed() {
    let (host, port, head) = forwarded(
        "GET http://pypi.org/simple/ HTTP/1.1\r\nHost: evil.example\r\nhost: other.example\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!((host.as_str(), port), ("pypi.org", 80));
    assert_eq!(
        head,
        "GET /simple/ HTTP/1.1\r\nHost: pypi.org\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn hop_by_hop_headers_are_not_forwarded_and_the_connection_closes() {
    let (_, _, head) = forwarded(
        "POST http://example.com:8080/a?b=1 HTTP/1.0\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nContent-Length: 5\r\n\r\n",
    );
    assert_eq!(
        head,
        "POST /a?b=1 HTTP/1.0\r\nHost: example.com:8080\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
    );
}

/// A client that sends its head a byte at a time gets the same request as one that
/// sends it whole, and the bytes after the head (a tunnel's first bytes) are kept.
#[test]
fn a_head_read_in_pieces_is_the_head_read_whole() {
    struct OneByte<'a>(&'a [u8]);
    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let bytes = b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n\x16\x03\x01";
    let whole = read_http(&mut Cursor::new(&bytes[1..]), bytes[0]).unwrap();
    let pieces = read_http(&mut OneByte(&bytes[1..]), bytes[0]).unwrap();
    assert_eq!(whole.0, pieces.0);
    assert_eq!(
        whole.0,
        HttpRequest::Connect {
            host: "pypi.org".into(),
            port: 443
        }
    );
    assert_eq!(whole.1, b"\x16\x03\x01");
    assert_eq!(pieces.1, b"");
}

#[test]
fn a_head_longer_than_the_limit_is_a_431_and_is_not_read_to_its_end() {
    let mut bytes = b"GET http://example.com/ HTTP/1.1\r\n".to_vec();
    while bytes.len() < 4 * MAX_HEAD {
        bytes.extend_from_slice(b"X-Pad: 0123456789abcdef\r\n");
    }
    let mut reader = Cursor::new(&bytes[1..]);
    match read_http(&mut reader, bytes[0]) {
        Err(HeadError::Refuse(431, message)) => assert!(message.contains("too large"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(
        reader.position() < (MAX_HEAD + 8192) as u64,
        "read {}",
        reader.position()
    );
    // So is a head of more header fields than the parser keeps, however short.
    let many = format!(
        "GET http://example.com/ HTTP/1.1\r\n{}\r\n",
        "a: b\r\n".repeat(200)
    );
    assert!(matches!(
        parse_http(many.as_bytes()),
        Err(HeadError::Refuse(431, _))
    ));
}

#[test]
fn malformed_heads_are_400s_that_say_what_is_wrong() {
    for (head, says) in [
        ("GET http://example.com/ HTTP/2.0\r\n\r\n", "HTTP/1"),
        ("GET  http://example.com/ HTTP/1.1\r\n\r\n", "malformed"),
        (
            "GET http://example.com/ HTTP/1.1\r\nBad Header: x\r\n\r\n",
            "malformed",
        ),
        (
            "GET http://example.com/ HTTP/1.1\r\n folded: x\r\n\r\n",
            "malformed",
        ),
        ("GET /relative HTTP/1.1\r\n\r\n", "absolute URI"),
        (
            "GET http://a@example.com/ HTTP/1.1\r\n\r\n",
            "user information",
        ),
        ("GET http://exa mple.com/ HTTP/1.1\r\n\r\n", "malformed"),
        ("CONNECT example.com HTTP/1.1\r\n\r\n", "HOST:PORT"),
    ] {
        match parse_http(head.as_bytes()) {
            Err(HeadError::Refuse(400, message)) => {
                assert!(message.contains(says), "{head:?}: {message}")
            }
            other => panic!("{head:?}: {other:?}"),
        }
    }
    // An incomplete head is not an error yet: more may come.
    assert_eq!(
        parse_http(b"GET http://example.com/ HTTP/1.1\r\nHost: x"),
        Ok(None)
    );
}

struct Peer {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn socks5(input: &[u8]) -> (Socks5Ask, Vec<u8>) {
    let mut peer = Peer {
        input: Cursor::new(input.to_vec()),
        output: Vec::new(),
    };
    (socks5_request(&mut peer), peer.output)
}

#[test]
fn socks5_requests_answer_the_method_and_name_their_target() {
    let mut name = vec![1, 0, 5, 1, 0, 3, 8];
    name.extend(b"pypi.org");
    name.extend([1, 187]);
    assert_eq!(
        socks5(&name),
        (
            Socks5Ask::Connect {
                host: "pypi.org".into(),
                port: 443
            },
            vec![5, 0]
        )
    );
    // No acceptable method: told so, and nothing else is read.
    assert_eq!(socks5(&[1, 2, 5, 1, 0]), (Socks5Ask::Gone, vec![5, 0xff]));
    // BIND is not served; an unknown address type is refused before its address.
    assert_eq!(
        socks5(&[1, 0, 5, 2, 0, 1, 10, 0, 0, 1, 0, 80]).0,
        Socks5Ask::Refuse(7)
    );
    assert_eq!(socks5(&[1, 0, 5, 1, 0, 9]).0, Socks5Ask::Refuse(8));
    // A client that goes away mid-request gets no reply.
    assert_eq!(
        socks5(&[1, 0, 5, 1, 0, 3, 8, b'p']),
        (Socks5Ask::Gone, vec![5, 0])
    );
}
