//! Signed models: ed25519 detached signatures over a component's digest,
//! the trusted publisher keys and the policy that enforces them.
//!
//! What is signed is domain-separated: [`DOMAIN`] followed by the 32 bytes of
//! the component's sha256 digest (the digest the store names versions by).
//! The prefix keeps a riskhost model signature from ever being valid as a
//! signature of anything else made with the same key, and vice versa.
//!
//! Text formats (all documented in `docs/signing.md`):
//!
//! ```text
//! public key     ed25519:<base64 of 32 bytes>
//! secret key     file: `#` comment lines, then `ed25519-secret:<base64 of the 32-byte seed>`
//! signature      file NAME.wasm.sig:
//!                  riskhost-signature-v1
//!                  key-id: <16 hex digits: sha256 of the public key, first 8 bytes>
//!                  digest: sha256:<64 hex digits>
//!                  signature: <base64 of 64 bytes>
//! ```
//!
//! The signature file names the digest it signs so that a refusal can say
//! *why*: "signed for digest X, the file has digest Y" means the component
//! was changed after signing. The key id only picks the trusted key to try;
//! the signature itself decides.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// The prefix of every signed message (then the 32 digest bytes).
pub(crate) const DOMAIN: &[u8] = b"riskhost-model-signature-v1\0";
/// First line of a signature file.
const SIG_HEADER: &str = "riskhost-signature-v1";
/// Prefix of a public key's text form.
const PUBLIC_PREFIX: &str = "ed25519:";
/// Prefix of the secret key line in a key file.
const SECRET_PREFIX: &str = "ed25519-secret:";
/// Largest signature file (or header) accepted; a real one is ~200 bytes.
pub(crate) const MAX_SIGNATURE_BYTES: usize = 4096;
/// The admin API's header carrying the base64 of a `.sig` file.
pub const SIGNATURE_HEADER: &str = "x-riskhost-signature";

/// Why a signature, key or policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the model is unsigned and signatures are required (--require-signatures): \
         sign it with `riskhost model sign` and ship the .sig beside it \
         (or send it in the `x-riskhost-signature` header)"
    )]
    Missing,
    #[error("the signature is malformed: {0}")]
    Malformed(String),
    #[error(
        "the signature is for digest {signed}, but the model has digest {actual}: \
         the model was changed after it was signed"
    )]
    DigestMismatch { signed: String, actual: String },
    #[error(
        "the model is signed by key {key_id}, which is not a trusted publisher \
         (--trusted-key / --trusted-keys-file)"
    )]
    Untrusted { key_id: String },
    #[error(
        "the signature does not verify under trusted key {key_id}: it was altered \
         or made with another key"
    )]
    BadSignature { key_id: String },
}

impl SignatureError {
    /// The API error code of this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Untrusted { .. } => "untrusted_publisher",
            SignatureError::Malformed(_)
            | SignatureError::DigestMismatch { .. }
            | SignatureError::BadSignature { .. } => "signature_invalid",
        }
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The 16-hex-digit id of a public key: the first 8 bytes of its sha256.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// The text form of a public key, `ed25519:<base64>`.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", BASE64.encode(key.as_bytes()))
}

/// Parses `ed25519:<base64 of 32 bytes>`.
pub(crate) fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let text = text.trim();
    let b64 = text.strip_prefix(PUBLIC_PREFIX).ok_or_else(|| {
        KeyError::Invalid(format!(
            "`{text}` is not a public key: expected `{PUBLIC_PREFIX}<base64>`"
        ))
    })?;
    let bytes: [u8; 32] = BASE64
        .decode(b64)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            KeyError::Invalid(format!("`{text}`: the key is not the base64 of 32 bytes"))
        })?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| KeyError::Invalid(format!("`{text}` is not an ed25519 public key: {e}")))
}

/// A new secret key from the operating system's randomness.
pub fn generate_key() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)
        .map_err(|e| KeyError::Invalid(format!("no randomness from the system: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The text of a secret key file.
pub fn secret_key_text(key: &SigningKey) -> String {
    format!(
        "# riskhost model signing key (ed25519). SECRET: keep it out of repositories and images.\n\
         # public key: {}\n\
         # key id: {}\n\
         {SECRET_PREFIX}{}\n",
        public_key_text(&key.verifying_key()),
        key_id(&key.verifying_key()),
        BASE64.encode(key.to_bytes())
    )
}

/// Parses a secret key file's text.
pub fn parse_secret_key(text: &str) -> Result<SigningKey, KeyError> {
    let line = meaningful_lines(text)
        .find(|l| l.starts_with(SECRET_PREFIX))
        .ok_or_else(|| {
            KeyError::Invalid(format!(
                "no `{SECRET_PREFIX}` line: not a key file written by `riskhost model keygen`"
            ))
        })?;
    let seed: [u8; 32] = BASE64
        .decode(&line[SECRET_PREFIX.len()..])
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::Invalid("the secret key is not the base64 of 32 bytes".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Lines that are neither blank nor `#` comments, trimmed.
fn meaningful_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The 32 raw bytes of a `sha256:<hex>` digest.
fn digest_bytes(digest: &str) -> Option<[u8; 32]> {
    let hex = crate::store::digest_hex(digest).ok()?;
    hex::decode(hex).ok()?.try_into().ok()
}

/// The message a signature covers: [`DOMAIN`] then the digest's bytes.
fn message(digest: &[u8; 32]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN.len() + 32);
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(digest);
    message
}

/// A parsed signature file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedSignature {
    pub key_id: String,
    pub digest: String,
    pub signature: Signature,
}

impl DetachedSignature {
    /// Signs `digest` (`sha256:<hex>`) with `key`.
    pub fn sign(key: &SigningKey, digest: &str) -> Result<DetachedSignature, KeyError> {
        use ed25519_dalek::Signer as _;
        let bytes = digest_bytes(digest)
            .ok_or_else(|| KeyError::Invalid(format!("`{digest}` is not a sha256 digest")))?;
        Ok(DetachedSignature {
            key_id: key_id(&key.verifying_key()),
            digest: digest.to_owned(),
            signature: key.sign(&message(&bytes)),
        })
    }

    /// The signature file's text.
    pub fn to_text(&self) -> String {
        format!(
            "{SIG_HEADER}\nkey-id: {}\ndigest: {}\nsignature: {}\n",
            self.key_id,
            self.digest,
            BASE64.encode(self.signature.to_bytes())
        )
    }

    /// Parses a signature file's text.
    pub fn parse(text: &str) -> Result<DetachedSignature, SignatureError> {
        let bad = |m: String| SignatureError::Malformed(m);
        if text.len() > MAX_SIGNATURE_BYTES {
            return Err(bad(format!(
                "it is {} bytes; a signature file is at most {MAX_SIGNATURE_BYTES}",
                text.len()
            )));
        }
        let mut lines = meaningful_lines(text);
        if lines.next() != Some(SIG_HEADER) {
            return Err(bad(format!("the first line must be `{SIG_HEADER}`")));
        }
        let mut fields = BTreeMap::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("`{line}` is not `name: value`")))?;
            let name = name.trim();
            if !matches!(name, "key-id" | "digest" | "signature") {
                return Err(bad(format!("unknown field `{name}`")));
            }
            if fields.insert(name, value.trim()).is_some() {
                return Err(bad(format!("`{name}` appears twice")));
            }
        }
        let field = |name: &str| {
            fields
                .get(name)
                .copied()
                .ok_or_else(|| bad(format!("no `{name}` field")))
        };
        let key_id = field("key-id")?;
        if key_id.len() != 16 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("key-id `{key_id}` is not 16 hex digits")));
        }
        let digest = field("digest")?;
        if digest_bytes(digest).is_none() {
            return Err(bad(format!(
                "digest `{digest}` is not sha256:<64 hex digits>"
            )));
        }
        let signature: [u8; 64] = BASE64
            .decode(field("signature")?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the signature is not the base64 of 64 bytes".into()))?;
        Ok(DetachedSignature {
            key_id: key_id.to_ascii_lowercase(),
            digest: digest.to_owned(),
            signature: Signature::from_bytes(&signature),
        })
    }

    /// Parses the admin API's header value: the base64 of a `.sig` file.
    pub fn from_header(value: &[u8]) -> Result<String, SignatureError> {
        if value.len() > MAX_SIGNATURE_BYTES * 2 {
            return Err(SignatureError::Malformed(format!(
                "the {SIGNATURE_HEADER} header is too long"
            )));
        }
        let text = BASE64
            .decode(value.trim_ascii())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                SignatureError::Malformed(format!(
                    "the {SIGNATURE_HEADER} header must be the base64 of a .sig file \
                     (e.g. `base64 -w0 model.wasm.sig`)"
                ))
            })?;
        Self::parse(&text)?;
        Ok(text)
    }
}

/// The publishers whose signatures are trusted, by key id.
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.keys()).finish()
    }
}

impl TrustedKeys {
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>) -> TrustedKeys {
        TrustedKeys {
            keys: keys.into_iter().map(|k| (key_id(&k), k)).collect(),
        }
    }

    /// Keys given as text, plus those of key files (one `ed25519:…` key per
    /// line; `#` comments and anything after the key on its line ignored).
    pub fn load(texts: &[String], files: &[std::path::PathBuf]) -> Result<TrustedKeys, KeyError> {
        let mut keys = Vec::new();
        for text in texts.iter().filter(|t| !t.trim().is_empty()) {
            keys.push(parse_public_key(text)?);
        }
        for path in files {
            keys.extend(read_key_file(path)?);
        }
        Ok(TrustedKeys::new(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a signature file's text against `digest` (`sha256:<hex>`).
    /// Returns the key id that signed it.
    pub fn verify(&self, digest: &str, signature: Option<&str>) -> Result<String, SignatureError> {
        let text = signature.ok_or(SignatureError::Missing)?;
        let sig = DetachedSignature::parse(text)?;
        if sig.digest != digest {
            return Err(SignatureError::DigestMismatch {
                signed: sig.digest,
                actual: digest.to_owned(),
            });
        }
        let key = self
            .keys
            .get(&sig.key_id)
            .ok_or_else(|| SignatureError::Untrusted {
                key_id: sig.key_id.clone(),
            })?;
        let bytes = digest_bytes(digest).ok_or_else(|| {
            SignatureError::Malformed(format!("`{digest}` is not a sha256 digest"))
        })?;
        key.verify_strict(&message(&bytes), &sig.signature)
            .map_err(|_| SignatureError::BadSignature {
                key_id: sig.key_id.clone(),
            })?;
        Ok(sig.key_id)
    }
}

/// Reads a file of public keys.
pub(crate) fn read_key_file(path: &Path) -> Result<Vec<VerifyingKey>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    meaningful_lines(&text)
        .map(|line| {
            let key = line.split_whitespace().next().unwrap_or_default();
            parse_public_key(key).map_err(|e| KeyError::Invalid(format!("{}: {e}", path.display())))
        })
        .collect()
}

/// Whether signatures are required, and whom they must come from.
#[derive(Debug, Clone, Default)]
pub struct SignaturePolicy {
    pub required: bool,
    pub trusted: TrustedKeys,
}

impl SignaturePolicy {
    /// A policy from settings; requiring signatures without a trusted key
    /// could load nothing, so it is refused.
    pub fn new(required: bool, trusted: TrustedKeys) -> Result<SignaturePolicy, KeyError> {
        if required && trusted.is_empty() {
            return Err(KeyError::Invalid(
                "--require-signatures needs at least one --trusted-key or --trusted-keys-file"
                    .into(),
            ));
        }
        Ok(SignaturePolicy { required, trusted })
    }

    /// Whether a version with digest `digest` and this signature may run.
    /// Without enforcement everything may; a signature that is present and
    /// does not verify is then only logged, so a rollout can be checked
    /// before it is enforced.
    pub fn check(
        &self,
        digest: &str,
        signature: Option<&str>,
        source: &str,
    ) -> Result<Option<String>, SignatureError> {
        if self.required {
            return self.trusted.verify(digest, signature).map(Some);
        }
        if signature.is_none() || self.trusted.is_empty() {
            return Ok(None);
        }
        match self.trusted.verify(digest, signature) {
            Ok(key_id) => Ok(Some(key_id)),
            Err(error) => {
                tracing::warn!(%source, %digest, %error, "the signature does not verify (not enforced)");
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    #[test]
    fn keys_and_signatures_round_trip_through_their_text_forms() {
        let key = generate_key().expect("key");
        let public = key.verifying_key();
        assert_eq!(
            parse_public_key(&public_key_text(&public)).expect("public"),
            public
        );
        let again = parse_secret_key(&secret_key_text(&key)).expect("secret");
        assert_eq!(again.to_bytes(), key.to_bytes());
        let d = digest_of(b"component");
        let sig = DetachedSignature::sign(&key, &d).expect("sign");
        let text = sig.to_text();
        assert_eq!(DetachedSignature::parse(&text).expect("parse"), sig);
        let header = BASE64.encode(&text);
        assert_eq!(
            DetachedSignature::from_header(header.as_bytes()).expect("header"),
            text
        );
        let trusted = TrustedKeys::new([public]);
        assert_eq!(
            trusted.verify(&d, Some(&text)).expect("verifies"),
            key_id(&public)
        );
    }

    #[test]
    fn each_refusal_says_why() {
        let key = generate_key().expect("key");
        let other = generate_key().expect("key");
        let trusted = TrustedKeys::new([key.verifying_key()]);
        let (d, tampered) = (digest_of(b"component"), digest_of(b"componenT"));
        let sig = DetachedSignature::sign(&key, &d).expect("sign").to_text();
        assert_eq!(trusted.verify(&d, None), Err(SignatureError::Missing));
        assert_eq!(
            trusted.verify(&tampered, Some(&sig)),
            Err(SignatureError::DigestMismatch {
                signed: d.clone(),
                actual: tampered.clone()
            })
        );
        let foreign = DetachedSignature::sign(&other, &d).expect("sign").to_text();
        assert_eq!(
            trusted.verify(&d, Some(&foreign)).map_err(|e| e.code()),
            Err("untrusted_publisher")
        );
        // A signature from another key under a trusted key's id.
        let forged = foreign.replace(
            &key_id(&other.verifying_key()),
            &key_id(&key.verifying_key()),
        );
        assert!(matches!(
            trusted.verify(&d, Some(&forged)),
            Err(SignatureError::BadSignature { .. })
        ));
        // A signature over the bare digest (no domain prefix) is not one.
        use ed25519_dalek::Signer as _;
        let bare = DetachedSignature {
            signature: key.sign(&digest_bytes(&d).expect("digest")),
            ..DetachedSignature::sign(&key, &d).expect("sign")
        };
        assert!(matches!(
            trusted.verify(&d, Some(&bare.to_text())),
            Err(SignatureError::BadSignature { .. })
        ));
        for garbage in [
            "",
            "hello",
            "riskhost-signature-v1\nkey-id: 00\n",
            &sig.replace("digest", "digestx"),
        ] {
            assert_eq!(
                trusted.verify(&d, Some(garbage)).map_err(|e| e.code()),
                Err("signature_invalid"),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn enforcement_needs_a_trusted_key_and_is_lenient_when_off() {
        assert!(SignaturePolicy::new(true, TrustedKeys::default()).is_err());
        let key = generate_key().expect("key");
        let off =
            SignaturePolicy::new(false, TrustedKeys::new([key.verifying_key()])).expect("policy");
        assert_eq!(off.check(&digest_of(b"x"), None, "t"), Ok(None));
        assert_eq!(off.check(&digest_of(b"x"), Some("junk"), "t"), Ok(None));
        let on =
            SignaturePolicy::new(true, TrustedKeys::new([key.verifying_key()])).expect("policy");
        assert_eq!(
            on.check(&digest_of(b"x"), None, "t"),
            Err(SignatureError::Missing)
        );
    }
}
