//! The enrollment exchange (ALPN `xfer-enroll/1`), as pure code.
//!
//! A connection that negotiates [`ENROLL_ALPN`] carries exactly one request
//! from the client and one response from the server, each framed like the
//! main protocol (`type: u8`, `length: u32` big endian, body) but with their
//! own types and much smaller bounds: nothing else may be said on it.
//! PROTOCOL.md ("Enrollment") is the normative description.

use super::frame::HEADER_LEN;

/// ALPN id of the enrollment exchange.
pub const ENROLL_ALPN: &[u8] = b"xfer-enroll/1";

/// Label of the TLS exporter (RFC 8446 §7.5) an invite's proof is bound to.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-xfer-enroll/1";

/// Length of the exporter value.
pub const EXPORTER_LEN: usize = 32;

/// Length of an invite's token id.
pub const TOKEN_ID_LEN: usize = 8;

/// Length of a proof (an Ed25519 signature).
pub const PROOF_LEN: usize = 64;

/// Largest certificate signing request, in DER bytes.
pub const MAX_CSR_LEN: usize = 4096;

/// Largest certificate (the issued one, or a CA's), in DER bytes.
pub const MAX_CERT_LEN: usize = 16 * 1024;

/// Most CA certificates an answer carries.
pub const MAX_CAS: usize = 8;

/// Largest revocation list an answer carries, in DER bytes.
pub const MAX_CRL_LEN: usize = 4 << 20;

/// Longest refusal message, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

mod code {
    pub const ENROLL: u8 = 0x50;
    pub const RENEW: u8 = 0x51;
    pub const ISSUED: u8 = 0x58;
    pub const REFUSED: u8 = 0x5F;
}

/// What the client asks for: the one request of an enrollment connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A certificate for an invite, proven by a signature with the key the
    /// invite's secret derives (see PROTOCOL.md).
    Enroll { token_id: [u8; TOKEN_ID_LEN], proof: [u8; PROOF_LEN], csr: Vec<u8> },
    /// A new certificate for the one this connection authenticated with.
    Renew { revoke_old: bool, csr: Vec<u8> },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The invite is unknown, expired or used, or the proof is wrong: one
    /// answer for all, so the answer tells a guesser nothing.
    InvalidInvite,
    /// Too many failed attempts from this address lately.
    RateLimited,
    /// The request was malformed (a CSR that does not parse or verify).
    BadRequest,
    /// Renewal refused: no certificate, or one that cannot be renewed here.
    NotRenewable,
    /// The server failed (it could not record or sign).
    Internal,
    /// A code this build does not know.
    Unknown(u16),
}

impl Refusal {
    fn to_u16(self) -> u16 {
        match self {
            Refusal::InvalidInvite => 1,
            Refusal::RateLimited => 2,
            Refusal::BadRequest => 3,
            Refusal::NotRenewable => 4,
            Refusal::Internal => 5,
            Refusal::Unknown(n) => n,
        }
    }

    fn from_u16(n: u16) -> Refusal {
        match n {
            1 => Refusal::InvalidInvite,
            2 => Refusal::RateLimited,
            3 => Refusal::BadRequest,
            4 => Refusal::NotRenewable,
            5 => Refusal::Internal,
            n => Refusal::Unknown(n),
        }
    }
}

/// The server's one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The new certificate (DER), the CA certificates to trust (DER, the
    /// signing CA first) and the CA's revocation list, if it has one.
    Issued {
        cert: Vec<u8>,
        cas: Vec<Vec<u8>>,
        crl: Option<Vec<u8>>,
    },
    Refused {
        refusal: Refusal,
        message: String,
    },
}

/// Why bytes are not a valid enrollment message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollFrameError {
    #[error("unknown enrollment message type 0x{0:02x}")]
    UnknownType(u8),
    #[error("enrollment message of {len} bytes is longer than the {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("malformed enrollment message: {0}")]
    Malformed(&'static str),
}

type Result<T> = std::result::Result<T, EnrollFrameError>;

/// Largest body of each message type, or an error for an unknown type.
fn max_body(kind: u8) -> Result<usize> {
    Ok(match kind {
        code::ENROLL => TOKEN_ID_LEN + PROOF_LEN + 2 + MAX_CSR_LEN,
        code::RENEW => 1 + 2 + MAX_CSR_LEN,
        code::ISSUED => 2 + MAX_CERT_LEN + 1 + MAX_CAS * (2 + MAX_CERT_LEN) + 4 + MAX_CRL_LEN,
        code::REFUSED => 2 + 2 + MAX_MESSAGE_LEN,
        other => return Err(EnrollFrameError::UnknownType(other)),
    })
}

/// From the 5-byte header alone: the length of the whole message, after
/// checking the type and bounding the length (before anything is
/// allocated). `Ok(None)` when fewer than 5 bytes are given.
pub fn check(src: &[u8]) -> Result<Option<usize>> {
    check_kinds(src, &[code::ENROLL, code::RENEW, code::ISSUED, code::REFUSED])
}

/// [`check`] for what a server reads: a request, never a (large) answer,
/// so a peer cannot make it set aside more than a request's bound.
pub fn check_request(src: &[u8]) -> Result<Option<usize>> {
    check_kinds(src, &[code::ENROLL, code::RENEW])
}

/// [`check`] for what a client reads: an answer.
pub fn check_response(src: &[u8]) -> Result<Option<usize>> {
    check_kinds(src, &[code::ISSUED, code::REFUSED])
}

fn check_kinds(src: &[u8], allowed: &[u8]) -> Result<Option<usize>> {
    let Some(h) = src.get(..HEADER_LEN) else { return Ok(None) };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if !allowed.contains(&h[0]) {
        return Err(match max_body(h[0]) {
            Ok(_) => EnrollFrameError::Malformed("a message of the other direction"),
            Err(e) => e,
        });
    }
    let max = max_body(h[0])?;
    if len > max {
        return Err(EnrollFrameError::TooLong { len, max });
    }
    Ok(Some(HEADER_LEN + len))
}

impl Request {
    /// Encodes the request with its header.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let kind = match self {
            Request::Enroll { token_id, proof, csr } => {
                b.extend_from_slice(token_id);
                b.extend_from_slice(proof);
                put16(&mut b, csr);
                code::ENROLL
            }
            Request::Renew { revoke_old, csr } => {
                b.push(u8::from(*revoke_old));
                put16(&mut b, csr);
                code::RENEW
            }
        };
        framed(kind, b)
    }

    /// Decodes one request from the start of `src`: `Ok(None)` if more
    /// bytes are needed, else the request and the bytes it used.
    pub fn decode(src: &[u8]) -> Result<Option<(Request, usize)>> {
        let Some(total) = check_request(src)? else { return Ok(None) };
        let Some(body) = src.get(HEADER_LEN..total) else { return Ok(None) };
        let mut r = Reader(body);
        let req = match src[0] {
            code::ENROLL => Request::Enroll {
                token_id: r.array()?,
                proof: r.array()?,
                csr: r.bytes16(MAX_CSR_LEN, "empty or oversized CSR")?,
            },
            code::RENEW => Request::Renew {
                revoke_old: match r.array::<1>()?[0] {
                    0 => false,
                    1 => true,
                    _ => return Err(EnrollFrameError::Malformed("flag other than 0 or 1")),
                },
                csr: r.bytes16(MAX_CSR_LEN, "empty or oversized CSR")?,
            },
            _ => return Err(EnrollFrameError::Malformed("a response where a request was expected")),
        };
        r.end()?;
        Ok(Some((req, total)))
    }
}

impl Response {
    /// Encodes the response with its header. A message longer than the
    /// bound is cut (at a character boundary).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        let kind = match self {
            Response::Issued { cert, cas, crl } => {
                put16(&mut b, cert);
                b.push(cas.len() as u8);
                for ca in cas {
                    put16(&mut b, ca);
                }
                let crl = crl.as_deref().unwrap_or_default();
                b.extend_from_slice(&(crl.len() as u32).to_be_bytes());
                b.extend_from_slice(crl);
                code::ISSUED
            }
            Response::Refused { refusal, message } => {
                b.extend_from_slice(&refusal.to_u16().to_be_bytes());
                let mut end = message.len().min(MAX_MESSAGE_LEN);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                put16(&mut b, &message.as_bytes()[..end]);
                code::REFUSED
            }
        };
        framed(kind, b)
    }

    /// Decodes one response, like [`Request::decode`].
    pub fn decode(src: &[u8]) -> Result<Option<(Response, usize)>> {
        let Some(total) = check_response(src)? else { return Ok(None) };
        let Some(body) = src.get(HEADER_LEN..total) else { return Ok(None) };
        let mut r = Reader(body);
        let resp = match src[0] {
            code::ISSUED => {
                let cert = r.bytes16(MAX_CERT_LEN, "empty or oversized certificate")?;
                let n = r.array::<1>()?[0] as usize;
                if n == 0 || n > MAX_CAS {
                    return Err(EnrollFrameError::Malformed("CA count outside 1..=8"));
                }
                let cas = (0..n)
                    .map(|_| r.bytes16(MAX_CERT_LEN, "empty or oversized CA certificate"))
                    .collect::<Result<Vec<_>>>()?;
                let len = u32::from_be_bytes(r.array()?) as usize;
                if len > MAX_CRL_LEN {
                    return Err(EnrollFrameError::Malformed("oversized revocation list"));
                }
                let crl = (len > 0).then(|| r.take(len).map(<[u8]>::to_vec)).transpose()?;
                Response::Issued { cert, cas, crl }
            }
            code::REFUSED => {
                let refusal = Refusal::from_u16(u16::from_be_bytes(r.array()?));
                let len = u16::from_be_bytes(r.array()?) as usize;
                if len > MAX_MESSAGE_LEN {
                    return Err(EnrollFrameError::Malformed("oversized message"));
                }
                let text = r.take(len)?;
                let message =
                    String::from_utf8(text.to_vec()).map_err(|_| EnrollFrameError::Malformed("message not UTF-8"))?;
                Response::Refused { refusal, message }
            }
            _ => return Err(EnrollFrameError::Malformed("a request where a response was expected")),
        };
        r.end()?;
        Ok(Some((resp, total)))
    }
}

fn framed(kind: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn put16(b: &mut Vec<u8>, data: &[u8]) {
    b.extend_from_slice(&(data.len() as u16).to_be_bytes());
    b.extend_from_slice(data);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(EnrollFrameError::Malformed("body shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    /// A `u16`-prefixed byte string of 1..=max bytes.
    fn bytes16(&mut self, max: usize, why: &'static str) -> Result<Vec<u8>> {
        let len = u16::from_be_bytes(self.array()?) as usize;
        if len == 0 || len > max {
            return Err(EnrollFrameError::Malformed(why));
        }
        Ok(self.take(len)?.to_vec())
    }

    fn end(&self) -> Result<()> {
        if self.0.is_empty() { Ok(()) } else { Err(EnrollFrameError::Malformed("trailing bytes after the fields")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Enroll { token_id: [1; 8], proof: [2; 64], csr: vec![3; 300] },
            Request::Renew { revoke_old: true, csr: vec![4; 1] },
            Request::Renew { revoke_old: false, csr: vec![5; MAX_CSR_LEN] },
        ]
    }

    fn responses() -> Vec<Response> {
        vec![
            Response::Issued { cert: vec![1; 600], cas: vec![vec![2; 500]], crl: None },
            Response::Issued { cert: vec![1; 9], cas: vec![vec![2; 5], vec![3; 7]], crl: Some(vec![9; 70]) },
            Response::Refused { refusal: Refusal::InvalidInvite, message: "the invite code is not valid".into() },
            Response::Refused { refusal: Refusal::Unknown(77), message: String::new() },
        ]
    }

    #[test]
    fn every_message_round_trips_and_needs_all_its_bytes() {
        for req in requests() {
            let bytes = req.encode();
            assert_eq!(Request::decode(&bytes).unwrap(), Some((req, bytes.len())));
            assert_eq!(Request::decode(&bytes[..bytes.len() - 1]).unwrap(), None);
        }
        for resp in responses() {
            let bytes = resp.encode();
            assert_eq!(Response::decode(&bytes).unwrap(), Some((resp, bytes.len())));
            assert_eq!(Response::decode(&bytes[..bytes.len() - 1]).unwrap(), None);
        }
    }

    #[test]
    fn lengths_are_bounded_from_the_header_alone() {
        let huge = [code::ENROLL, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(check(&huge), Err(EnrollFrameError::TooLong { .. })));
        assert_eq!(check(&[0x01, 0, 0, 0, 0]), Err(EnrollFrameError::UnknownType(0x01)));
        assert_eq!(check(&[code::RENEW, 0, 0]), Ok(None));
        // A server never sets aside an answer's bound for what a client sends.
        let big_answer = [code::ISSUED, 0, 0x40, 0, 0];
        assert!(check(&big_answer).unwrap().is_some());
        assert!(check_request(&big_answer).is_err());
        assert!(check_response(&[code::ENROLL, 0, 0, 0, 9]).is_err());
    }

    #[test]
    fn malformed_bodies_and_wrong_directions_are_refused() {
        // A response where a request belongs, and the other way round.
        let resp = responses()[0].encode();
        assert!(Request::decode(&resp).is_err());
        assert!(Response::decode(&requests()[0].encode()).is_err());
        // Trailing bytes inside the body.
        let mut b = requests()[1].encode();
        b.push(0);
        let len = (b.len() - HEADER_LEN) as u32;
        b[1..5].copy_from_slice(&len.to_be_bytes());
        assert!(Request::decode(&b).is_err());
        // An empty CSR, a bad flag, no CA.
        assert!(Request::decode(&framed(code::RENEW, vec![0, 0, 0])).is_err());
        assert!(Request::decode(&framed(code::RENEW, vec![2, 0, 1, 7])).is_err());
        assert!(Response::decode(&framed(code::ISSUED, vec![0, 1, 7, 0, 0, 0, 0, 0])).is_err());
    }

    #[test]
    fn long_messages_are_cut_on_encode() {
        let message = "é".repeat(MAX_MESSAGE_LEN);
        let bytes = Response::Refused { refusal: Refusal::Internal, message }.encode();
        let Some((Response::Refused { message, .. }, _)) = Response::decode(&bytes).unwrap() else { panic!() };
        assert!(message.len() <= MAX_MESSAGE_LEN && message.chars().all(|c| c == 'é'));
    }
}
