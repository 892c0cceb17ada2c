//! The egress proxy's HTTP request head reader (`httparse` underneath): the bytes a
//! payload sends to 127.0.0.1:3128, delivered in chunks whose sizes the input picks.
//!
//! Holds: no panic, no hang; the head read is bounded (MAX_HEAD); every refusal is a
//! 400 or 431; a CONNECT names a valid host and a port > 0, and its request line,
//! written back, parses to the same; a forwarded head is a well-formed origin-form
//! request that parses back whole, with exactly one Host (the authority the policy
//! was asked about), `Connection: close`, and no hop-by-hop header.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use phantom_egress::fuzzing::{parse_http, read_http, HeadError, HttpRequest, MAX_HEAD};

/// Hands out the input in chunks: the first byte of the input picks the chunk size.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
    reads: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reads += 1;
        let n = self.chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut client = Chunked {
        data: rest,
        chunk: usize::from(chunk % 64) + 1,
        reads: 0,
    };
    let result = read_http(&mut client, first);
    let consumed = rest.len() - client.data.len() + 1;
    assert!(
        consumed <= MAX_HEAD + 4096 + 64,
        "read {consumed} bytes for one head"
    );
    let (request, after) = match result {
        Err(HeadError::Gone) => {
            assert!(client.data.is_empty(), "gave up before the input ended");
            return;
        }
        Err(HeadError::Refuse(status, message)) => {
            assert!(status == 400 || status == 431, "status {status}");
            assert!(!message.contains('\n') && !message.is_empty());
            return;
        }
        Ok(r) => r,
    };
    // What came after the head is what was read past it, unparsed.
    let head_len = consumed - after.len();
    assert_eq!(&data[head_len..consumed], &after[..]);
    // The same bytes, parsed in one piece, give the same request.
    let whole = parse_http(&data[..head_len]).expect("the head parses in one piece");
    assert_eq!(whole, Some((clone(&request), head_len)));
    match request {
        HttpRequest::Connect { host, port } => {
            assert!(port > 0 && !host.is_empty());
            let shown = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            let line = format!("CONNECT {shown}:{port} HTTP/1.1\r\n\r\n");
            let back = parse_http(line.as_bytes()).expect("a CONNECT line re-parses");
            assert_eq!(
                back,
                Some((HttpRequest::Connect { host, port }, line.len()))
            );
        }
        HttpRequest::Forward { host, port, head } => {
            assert!(port > 0 && !host.is_empty());
            let mut headers = [httparse_header(); 130];
            let mut req = httparse_request(&mut headers);
            let status = req.parse(&head).expect("the forwarded head is well formed");
            assert_eq!(
                status,
                httparse::Status::Complete(head.len()),
                "one whole head"
            );
            let path = req.path.unwrap();
            assert!(path.starts_with('/'), "origin form: {path:?}");
            let named = |n: &str| {
                req.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(n))
                    .count()
            };
            assert_eq!(named("host"), 1);
            assert_eq!(named("connection"), 1);
            for hop in ["proxy-connection", "proxy-authorization", "keep-alive"] {
                assert_eq!(named(hop), 0, "{hop} forwarded");
            }
            let host_value = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .unwrap()
                .value;
            let authority = std::str::from_utf8(host_value).unwrap();
            let (h, p) = phantom_egress::fuzzing::split_authority(authority, Some(80))
                .expect("Host is an authority");
            assert_eq!((h, p), (host, port), "Host names the server connected to");
        }
    }
});

fn clone(r: &HttpRequest) -> HttpRequest {
    match r {
        HttpRequest::Connect { host, port } => HttpRequest::Connect {
            host: host.clone(),
            port: *port,
        },
        HttpRequest::Forward { host, port, head } => HttpRequest::Forward {
            host: host.clone(),
            port: *port,
            head: head.clone(),
        },
    }
}

fn httparse_header() -> httparse::Header<'static> {
    httparse::EMPTY_HEADER
}

fn httparse_request<'h, 'b>(headers: &'h mut [httparse::Header<'b>]) -> httparse::Request<'h, 'b> {
    httparse::Request::new(headers)
}
