//! Webhook signatures, credential sealing and token hashing.

use chacha20poly1305::aead::{Aead, Payload};
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
    hex::encode(body_mac(secret, timestamp, body))
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
    #[error("the X-Bridge-Signature header carries more than 8 v1 signatures")]
    TooManyCandidates,
    #[error("the X-Bridge-Signature header is longer than 4096 bytes")]
    TooLarge,
}

/// Most `v1=` candidates one header may carry (SPEC §2).
pub const MAX_SIGNATURE_CANDIDATES: usize = 8;
/// Longest signature header accepted, in bytes (SPEC §2).
pub const MAX_SIGNATURE_HEADER: usize = 4096;

#[cfg(test)]
thread_local! {
    /// HMACs computed by `verify_signature` on this thread (test builds only).
    static HMACS_COMPUTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `HMAC-SHA256(secret, "<t>.<body>")`, raw.
fn body_mac(secret: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    #[cfg(test)]
    HMACS_COMPUTED.with(|n| n.set(n.get() + 1));
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// A signature header whose shape, size and timestamp passed: what is left is to compare its
/// candidates with the body's HMAC (`verify`). Judged before the body is even read, so a
/// request whose header can never match costs nothing more.
#[derive(Debug)]
pub struct SignatureHeader {
    timestamp: i64,
    candidates: Vec<Vec<u8>>,
}

/// Checks a signature header's shape (`t=<unix seconds>,v1=<hex>`, at most 8 candidates, at
/// most 4 KiB) and that its timestamp is fresh, hashing nothing.
pub fn parse_signature_header(header: Option<&str>, now_secs: i64) -> Result<SignatureHeader, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > MAX_SIGNATURE_HEADER {
        return Err(SignatureError::TooLarge);
    }
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.trim().split_once('=').ok_or(SignatureError::Malformed)?;
        match key {
            "t" => timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            "v1" => {
                if candidates.len() == MAX_SIGNATURE_CANDIDATES {
                    return Err(SignatureError::TooManyCandidates);
                }
                candidates.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?);
            }
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
    Ok(SignatureHeader { timestamp, candidates })
}

impl SignatureHeader {
    /// Computes the body's HMAC once per accepted secret and compares it in constant time with
    /// each candidate, so an unauthenticated request costs at most one pass over the body per
    /// configured secret, whatever its header holds.
    pub fn verify(&self, body: &[u8], secrets: &[String]) -> Result<(), SignatureError> {
        use subtle::ConstantTimeEq;
        for secret in secrets {
            let expected = body_mac(secret, self.timestamp, body);
            // Every candidate is compared (no early exit between them), each in constant time.
            let matched = self
                .candidates
                .iter()
                .fold(subtle::Choice::from(0), |any, c| any | c.as_slice().ct_eq(&expected));
            if bool::from(matched) {
                return Ok(());
            }
        }
        Err(SignatureError::Mismatch)
    }
}

/// Checks a signature header against every accepted secret (`parse_signature_header`, then
/// `SignatureHeader::verify`).
pub fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now_secs: i64,
) -> Result<(), SignatureError> {
    parse_signature_header(header, now_secs)?.verify(body, secrets)
}

/// Encrypts credentials at rest: XChaCha20-Poly1305 with a random nonce. Seals with the current
/// key; opens with the current or the previous one (key rotation).
///
/// A sealed value is bound to its owner (an app's id): the owner is the cipher's associated
/// data, so a sealed secret moved to another app's row by someone who can write the database does
/// not open there. Layout: `SEALED_V2`, the 24-byte nonce, the ciphertext. Values sealed before
/// owners were bound (the nonce, then the ciphertext, no associated data) still open, and are
/// sealed the new way at their next write or by `scim-bridge rekey`.
#[derive(Clone)]
pub struct Sealer {
    /// Current key first.
    ciphers: Vec<XChaCha20Poly1305>,
}

/// Marks a value sealed with its owner bound.
const SEALED_V2: &[u8; 4] = b"sb2\0";

/// The owner the key check (`crate::check_encryption_keys`) is sealed for: no app id looks like it.
pub const KEY_CHECK_OWNER: &str = "key-check";

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

    /// Seals `plaintext` for `owner` with the current key.
    pub fn seal(&self, owner: &str, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes = random_bytes::<24>();
        let nonce = XNonce::from(nonce_bytes);
        let mut out = SEALED_V2.to_vec();
        out.extend_from_slice(&nonce_bytes);
        out.extend(
            self.ciphers[0]
                .encrypt(
                    &nonce,
                    Payload {
                        msg: plaintext,
                        aad: owner.as_bytes(),
                    },
                )
                .expect("encryption of a small payload"),
        );
        out
    }

    /// Opens a value sealed for `owner` with any accepted key (or one sealed before owners were
    /// bound); `None` if no key opens it or it was sealed for another owner.
    pub fn open(&self, owner: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if let Some(rest) = sealed.strip_prefix(SEALED_V2.as_slice())
            && let Some(opened) = self.open_raw(rest, owner.as_bytes())
        {
            return Some(opened);
        }
        // A value sealed the old way. (A value sealed for an owner never opens without it.)
        self.open_raw(sealed, b"")
    }

    /// Whether the value was sealed before owners were bound (it is sealed again at its next
    /// write).
    pub fn is_unbound(&self, owner: &str, sealed: &[u8]) -> bool {
        let bound = sealed
            .strip_prefix(SEALED_V2.as_slice())
            .is_some_and(|rest| self.open_raw(rest, owner.as_bytes()).is_some());
        !bound && self.open_raw(sealed, b"").is_some()
    }

    fn open_raw(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 24 {
            return None;
        }
        let (nonce, ciphertext) = sealed.split_at(24);
        let nonce = XNonce::try_from(nonce).ok()?;
        self.ciphers
            .iter()
            .find_map(|cipher| cipher.decrypt(&nonce, Payload { msg: ciphertext, aad }).ok())
    }

    /// Seals the way values were sealed before owners were bound (no owner, no marker): what a
    /// database written by an earlier release holds. For tests of upgrades only.
    #[doc(hidden)]
    pub fn seal_as_before_owners(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes = random_bytes::<24>();
        let mut out = nonce_bytes.to_vec();
        out.extend(
            self.ciphers[0]
                .encrypt(&XNonce::from(nonce_bytes), plaintext)
                .expect("encryption of a small payload"),
        );
        out
    }

    /// Opens with any accepted key and seals again for the same owner with the current one.
    pub fn reseal(&self, owner: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        self.open(owner, sealed).map(|plaintext| self.seal(owner, &plaintext))
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

    fn hmacs_for(header: &str, body: &[u8], secrets: &[String]) -> (Result<(), SignatureError>, usize) {
        HMACS_COMPUTED.with(|n| n.set(0));
        let result = verify_signature(Some(header), body, secrets, 1_000);
        (result, HMACS_COMPUTED.with(|n| n.get()))
    }

    #[test]
    fn a_header_with_more_than_eight_candidates_or_over_4_kib_is_refused_before_any_hmac() {
        let body = vec![b'x'; 1024 * 1024];
        let secrets = vec!["new".to_string(), "old".to_string()];
        let flood = format!("t=1000{}", ",v1=".repeat(20_000));
        assert_eq!(hmacs_for(&flood, &body, &secrets), (Err(SignatureError::TooLarge), 0));
        let nine = format!("t=1000{}", ",v1=00".repeat(9));
        assert!(nine.len() < MAX_SIGNATURE_HEADER);
        assert_eq!(
            hmacs_for(&nine, &body, &secrets),
            (Err(SignatureError::TooManyCandidates), 0)
        );
        let right = sign("old", 1_000, &body);
        let nine_with_right = format!("t=1000{},v1={right}", ",v1=00".repeat(8));
        assert_eq!(
            hmacs_for(&nine_with_right, &body, &secrets),
            (Err(SignatureError::TooManyCandidates), 0)
        );
    }

    #[test]
    fn the_body_is_hashed_at_most_once_per_secret_whatever_the_candidates() {
        let body = b"{}";
        let secrets = vec!["new".to_string(), "old".to_string()];
        let eight_wrong = format!("t=1000{}", ",v1=00".repeat(8));
        assert_eq!(
            hmacs_for(&eight_wrong, body, &secrets),
            (Err(SignatureError::Mismatch), 2)
        );
        let right = sign("old", 1_000, body);
        let last_of_eight = format!("t=1000{},v1={right}", ",v1=00".repeat(7));
        assert_eq!(hmacs_for(&last_of_eight, body, &secrets), (Ok(()), 2));
        let current = signature_header("new", 1_000, body);
        assert_eq!(hmacs_for(&current, body, &secrets), (Ok(()), 1));
        let stale = signature_header("new", 2_000, body);
        assert_eq!(hmacs_for(&stale, body, &secrets), (Err(SignatureError::Stale), 0));
    }

    #[test]
    fn sealed_credentials_open_only_with_the_same_key() {
        let sealer = Sealer::new(&[[7u8; 32]]);
        let sealed = sealer.seal("app-1", b"token-123");
        assert!(!sealed.windows(9).any(|w| w == b"token-123"));
        assert_eq!(sealer.open("app-1", &sealed).unwrap(), b"token-123");
        assert!(Sealer::new(&[[8u8; 32]]).open("app-1", &sealed).is_none());
    }

    #[test]
    fn a_sealed_secret_opens_only_for_the_app_it_was_sealed_for() {
        let sealer = Sealer::new(&[[7u8; 32]]);
        let sealed = sealer.seal("app-1", b"token-123");
        assert!(sealer.open("app-2", &sealed).is_none());
        // Nor with its marker stripped, as if it had been sealed before owners were bound.
        assert!(sealer.open("app-2", &sealed[SEALED_V2.len()..]).is_none());
        assert!(sealer.open("app-1", &sealed[SEALED_V2.len()..]).is_none());
        assert!(!sealer.is_unbound("app-1", &sealed));
    }

    #[test]
    fn a_secret_sealed_before_owners_were_bound_still_opens_and_reseals_bound() {
        let sealer = Sealer::new(&[[7u8; 32]]);
        let old = sealer.seal_as_before_owners(b"token-123");
        assert!(sealer.is_unbound("app-1", &old));
        assert_eq!(sealer.open("app-1", &old).unwrap(), b"token-123");
        let resealed = sealer.reseal("app-1", &old).unwrap();
        assert!(!sealer.is_unbound("app-1", &resealed));
        assert_eq!(sealer.open("app-1", &resealed).unwrap(), b"token-123");
        assert!(sealer.open("app-2", &resealed).is_none());
    }

    #[test]
    fn during_a_rotation_either_key_opens_and_the_current_one_seals() {
        let old = Sealer::new(&[[1u8; 32]]);
        let rotating = Sealer::new(&[[2u8; 32], [1u8; 32]]);
        let new_only = Sealer::new(&[[2u8; 32]]);
        let sealed_before = old.seal("a", b"secret");
        assert_eq!(rotating.open("a", &sealed_before).unwrap(), b"secret");
        assert!(new_only.open("a", &sealed_before).is_none());
        let sealed_during = rotating.seal("a", b"fresh");
        assert_eq!(new_only.open("a", &sealed_during).unwrap(), b"fresh");
        let resealed = rotating.reseal("a", &sealed_before).unwrap();
        assert_eq!(new_only.open("a", &resealed).unwrap(), b"secret");
        assert!(new_only.reseal("a", &sealed_before).is_none());
    }
}
