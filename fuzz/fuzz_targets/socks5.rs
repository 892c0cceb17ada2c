//! The egress proxy's SOCKS5 greeting and request reader (RFC 1928), after the
//! version byte: the bytes a payload sends, and what the proxy answers.
//!
//! Holds: no panic, no hang, at most 255 + 255 bytes buffered; the proxy writes only
//! the method selection (`05 00`, or `05 FF` and nothing else); a destination has a
//! valid host and a port > 0, and the request, encoded again, reads back the same.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use phantom_egress::fuzzing::{socks5_reply, socks5_request, Socks5Ask};

struct Peer<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn run(input: &[u8]) -> (Socks5Ask, Vec<u8>) {
    let mut peer = Peer {
        input,
        output: Vec::new(),
    };
    let asked = socks5_request(&mut peer);
    (asked, peer.output)
}

fuzz_target!(|data: &[u8]| {
    let (asked, output) = run(data);
    assert!(
        output.is_empty() || output == [5, 0] || output == [5, 0xff],
        "wrote {output:?}"
    );
    match asked {
        Socks5Ask::Gone => {}
        Socks5Ask::Refuse(code) => {
            assert_eq!(output, [5, 0]);
            assert!(matches!(code, 7 | 8), "reply code {code}");
            assert_eq!(socks5_reply(code)[..2], [5, code]);
        }
        Socks5Ask::Connect { host, port } => {
            assert_eq!(output, [5, 0]);
            assert!(port > 0 && !host.is_empty());
            // Encode the request again, by the form of the host, and read it back.
            let mut again = vec![1, 0, 5, 1, 0];
            match host.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(v4)) => {
                    again.push(1);
                    again.extend(v4.octets());
                }
                Ok(std::net::IpAddr::V6(v6)) => {
                    again.push(4);
                    again.extend(v6.octets());
                }
                Err(_) => {
                    again.push(3);
                    again.push(u8::try_from(host.len()).expect("a name of at most 255 bytes"));
                    again.extend(host.as_bytes());
                }
            }
            again.extend(port.to_be_bytes());
            let (back, _) = run(&again);
            assert_eq!(back, Socks5Ask::Connect { host, port });
        }
    }
});
