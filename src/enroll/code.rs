//! Invite codes, and the proof that binds one to a TLS connection.
//!
//! A code is `xfer1-ID-SECRET-CA-NAME`: a 64-bit token id, a 128-bit secret
//! and the SHA-256 of the CA certificate in lower-case hex, then the name the
//! invite is for. Hex, `-` and the name's alphabet (letters, digits, `-`,
//! `.`, `_`) survive shells, YAML and chat clients unquoted.
//!
//! The secret never travels. It seeds an Ed25519 key; the CA's machine
//! stores only that key's public half (a one-way function of the secret,
//! useless to whoever reads it), and the client signs the TLS exporter of
//! its connection with the private half. A signature made for one connection
//! cannot be replayed on another, even by a server that holds a valid
//! certificate of the same CA.

use std::fmt;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::error::Error;
use crate::protocol::enroll::{EXPORTER_LEN, PROOF_LEN, TOKEN_ID_LEN};

const PREFIX: &str = "xfer1";
const SECRET_LEN: usize = 16;
const KEY_CONTEXT: &[u8] = b"xfer-enroll/1 invite key\0";
const PROOF_CONTEXT: &[u8] = b"xfer-enroll/1 invite proof\0";

/// An invite code. Its `Debug` never shows the secret, and it has no
/// `Display`: the one way to print it is [`InviteCode::reveal`].
#[derive(Clone, PartialEq, Eq)]
pub struct InviteCode {
    pub token_id: [u8; TOKEN_ID_LEN],
    secret: [u8; SECRET_LEN],
    /// SHA-256 of the DER of the CA certificate the server must chain to.
    pub ca_sha256: [u8; 32],
    /// The name the invite is for (the server decides; the client uses it
    /// to know which files it will write).
    pub name: String,
}

impl fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InviteCode").field("token_id", &hex(&self.token_id)).field("name", &self.name).finish()
    }
}

impl InviteCode {
    /// A new code for `name` under the CA whose certificate is `ca_der`.
    pub fn generate(name: &str, ca_der: &[u8]) -> InviteCode {
        let mut token_id = [0; TOKEN_ID_LEN];
        let mut secret = [0; SECRET_LEN];
        aws_lc_rs::rand::fill(&mut token_id).expect("system randomness");
        aws_lc_rs::rand::fill(&mut secret).expect("system randomness");
        InviteCode { token_id, secret, ca_sha256: sha256(ca_der), name: name.to_owned() }
    }

    /// Parses a code as typed (surrounding white space ignored). The error
    /// never quotes the input: it may be a real code with a typo.
    pub fn parse(s: &str) -> Result<InviteCode, Error> {
        let bad = |what: &str| {
            Error::Usage(format!(
                "that is not a valid invite code ({what}): a code looks like xfer1-<16 hex>-<32 hex>-<64 hex>-NAME, \
                 as `xfer keygen --invite NAME` printed it on the CA's machine"
            ))
        };
        let mut parts = s.trim().splitn(5, '-');
        if parts.next() != Some(PREFIX) {
            return Err(bad("it does not start with xfer1-"));
        }
        let token_id = unhex(parts.next().unwrap_or_default()).ok_or_else(|| bad("the token id"))?;
        let secret = unhex(parts.next().unwrap_or_default()).ok_or_else(|| bad("the secret"))?;
        let ca_sha256 = unhex(parts.next().unwrap_or_default()).ok_or_else(|| bad("the CA fingerprint"))?;
        let name = parts.next().unwrap_or_default();
        crate::pki::check_name(name).map_err(|_| bad("the name"))?;
        Ok(InviteCode { token_id, secret, ca_sha256, name: name.to_owned() })
    }

    /// The code as one line, to hand to the new machine.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}-{}-{}-{}-{}", hex(&self.token_id), hex(&self.secret), hex(&self.ca_sha256), self.name)
    }

    /// What the CA's machine keeps to check proofs: the public half of the
    /// key the secret seeds.
    pub fn verifier(&self) -> [u8; 32] {
        let pair = self.key_pair();
        pair.public_key().as_ref().try_into().expect("an Ed25519 public key is 32 bytes")
    }

    /// Proves knowledge of the secret for one connection (its exporter
    /// value) and one certificate request.
    pub fn prove(&self, exporter: &[u8; EXPORTER_LEN], csr: &[u8]) -> [u8; PROOF_LEN] {
        let msg = transcript(&self.token_id, exporter, csr);
        self.key_pair().sign(&msg).as_ref().try_into().expect("an Ed25519 signature is 64 bytes")
    }

    fn key_pair(&self) -> Ed25519KeyPair {
        let seed = sha256(&[KEY_CONTEXT, &self.token_id, &self.secret].concat());
        Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32 bytes are an Ed25519 seed")
    }
}

/// Checks a proof against the stored verifier.
pub fn check_proof(
    verifier: &[u8; 32],
    token_id: &[u8; TOKEN_ID_LEN],
    exporter: &[u8; EXPORTER_LEN],
    csr: &[u8],
    proof: &[u8; PROOF_LEN],
) -> bool {
    let msg = transcript(token_id, exporter, csr);
    UnparsedPublicKey::new(&ED25519, verifier).verify(&msg, proof).is_ok()
}

/// What a proof signs: context, token id, the connection's exporter value
/// and the SHA-256 of the certificate request.
fn transcript(token_id: &[u8; TOKEN_ID_LEN], exporter: &[u8; EXPORTER_LEN], csr: &[u8]) -> Vec<u8> {
    [PROOF_CONTEXT, token_id, exporter, &sha256(csr)].concat()
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref().try_into().expect("32 bytes")
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `N` bytes of hex (either case), or `None`.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_round_trips_and_its_debug_hides_the_secret() {
        let code = InviteCode::generate("runner-7", b"ca");
        let line = code.reveal();
        assert!(line.starts_with("xfer1-") && line.ends_with("-runner-7"), "{line}");
        assert!(line.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{line}");
        assert_eq!(InviteCode::parse(&format!("  {line}\n")).unwrap(), code);
        let secret = hex(&code.secret);
        assert!(!format!("{code:?}").contains(&secret));
    }

    #[test]
    fn malformed_codes_are_refused_without_being_quoted() {
        let line = InviteCode::generate("a", b"ca").reveal();
        for bad in [
            String::new(),
            line.replacen("xfer1", "xfer2", 1),
            line[..line.len() - 2].to_owned(),
            line.replace("-a", "-../x"),
            format!("{}z{}", &line[..10], &line[11..]),
        ] {
            let e = InviteCode::parse(&bad).unwrap_err().to_string();
            assert!(bad.len() < 20 || !e.contains(&bad[6..30]), "{e}");
        }
    }

    #[test]
    fn a_proof_holds_only_for_its_connection_and_request() {
        let code = InviteCode::generate("a", b"ca");
        let verifier = code.verifier();
        let proof = code.prove(&[1; 32], b"csr");
        assert!(check_proof(&verifier, &code.token_id, &[1; 32], b"csr", &proof));
        assert!(!check_proof(&verifier, &code.token_id, &[2; 32], b"csr", &proof));
        assert!(!check_proof(&verifier, &code.token_id, &[1; 32], b"other", &proof));
        let other = InviteCode::generate("a", b"ca");
        assert!(!check_proof(&other.verifier(), &code.token_id, &[1; 32], b"csr", &proof));
    }
}
