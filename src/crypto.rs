//! Webhook signatures, credential sealing and token hashing.

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Seconds a signature's timestamp may be away from now.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    hex::encode(buf)
}

/// `hex(HMAC-SHA256(secret, "<t>.<body>"))`
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `X-Bridge-Signature` header value for a body.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Bridge-Signature header is missing")]
    Missing,
    #[error("the X-Bridge-Signature header is not of the form t=<unix seconds>,v1=<hex>")]
    Malformed,
    #[error("the signature timestamp is more than 300 seconds from now")]
    Stale,
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// Checks a signature header against every accepted secret, in constant time per comparison.
pub fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match key {
            "t" => timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            "v1" => candidates.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // `abs_diff`: a timestamp near i64::MIN or MAX must be stale, not an arithmetic overflow.
    if now_secs.abs_diff(timestamp) > SIGNATURE_TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    for secret in secrets {
        for candidate in &candidates {
            let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            if mac.verify_slice(candidate).is_ok() {
                return Ok(());
            }
        }
    }
    Err(SignatureError::Mismatch)
}

/// Encrypts credentials at rest: XChaCha20-Poly1305 with a random nonce stored in front. Seals
/// with the current key; opens with the current or the previous one (key rotation).
#[derive(Clone)]
pub struct Sealer {
    /// Current key first.
    ciphers: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

impl Sealer {
    /// `keys`: the current key, then any previous ones still accepted for opening.
    pub fn new(keys: &[[u8; 32]]) -> Self {
        assert!(!keys.is_empty(), "a sealer needs a key");
        Self {
            ciphers: keys
                .iter()
                .map(|key| XChaCha20Poly1305::new_from_slice(key).expect("32-byte key"))
                .collect(),
        }
    }

    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes = random_bytes::<24>();
        let nonce = XNonce::from(nonce_bytes);
        let mut out = nonce_bytes.to_vec();
        out.extend(
            self.ciphers[0]
                .encrypt(&nonce, plaintext)
                .expect("encryption of a small payload"),
        );
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(24);
        let nonce = XNonce::try_from(nonce).ok()?;
        self.ciphers
            .iter()
            .find_map(|cipher| cipher.decrypt(&nonce, ciphertext).ok())
    }

    /// Opens with any accepted key and seals again with the current one.
    pub fn reseal(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.open(sealed).map(|plaintext| self.seal(&plaintext))
    }
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_made_with_the_previous_secret_is_accepted() {
        let body = br#"{"id":"1"}"#;
        let header = signature_header("old", 1_000, body);
        let secrets = vec!["new".to_string(), "old".to_string()];
        assert_eq!(verify_signature(Some(&header), body, &secrets, 1_010), Ok(()));
    }

    #[test]
    fn stale_wrong_and_missing_signatures_are_refused() {
        let body = b"{}";
        let secrets = vec!["s".to_string()];
        let header = signature_header("s", 1_000, body);
        assert_eq!(
            verify_signature(Some(&header), body, &secrets, 1_301),
            Err(SignatureError::Stale)
        );
        let wrong = signature_header("x", 1_000, body);
        assert_eq!(
            verify_signature(Some(&wrong), body, &secrets, 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(None, body, &secrets, 1_000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(Some("v1=zz"), body, &secrets, 1_000),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn sealed_credentials_open_only_with_the_same_key() {
        let sealer = Sealer::new(&[[7u8; 32]]);
        let sealed = sealer.seal(b"token-123");
        assert!(!sealed.windows(9).any(|w| w == b"token-123"));
        assert_eq!(sealer.open(&sealed).unwrap(), b"token-123");
        assert!(Sealer::new(&[[8u8; 32]]).open(&sealed).is_none());
    }

    #[test]
    fn during_a_rotation_either_key_opens_and_the_current_one_seals() {
        let old = Sealer::new(&[[1u8; 32]]);
        let rotating = Sealer::new(&[[2u8; 32], [1u8; 32]]);
        let new_only = Sealer::new(&[[2u8; 32]]);
        let sealed_before = old.seal(b"secret");
        assert_eq!(rotating.open(&sealed_before).unwrap(), b"secret");
        assert!(new_only.open(&sealed_before).is_none());
        let sealed_during = rotating.seal(b"fresh");
        assert_eq!(new_only.open(&sealed_during).unwrap(), b"fresh");
        let resealed = rotating.reseal(&sealed_before).unwrap();
        assert_eq!(new_only.open(&resealed).unwrap(), b"secret");
        assert!(new_only.reseal(&sealed_before).is_none());
    }
}
