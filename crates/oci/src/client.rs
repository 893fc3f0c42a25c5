//! [`OciClient`]: push and pull of components and their signatures over
//! the OCI distribution protocol (`oci-client`), with the errors and
//! metrics riskhost answers with.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

/// The config of a component artifact (CNCF Wasm OCI artifact layout).
pub(crate) const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The component layer.
pub(crate) const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The layer of the older layout (wasm-to-oci, early wkg), still read.
const OLD_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// The configs of older layouts, still read.
const OLD_CONFIG_MEDIA_TYPES: &[&str] = &[
    "application/vnd.wasm.config.v1+json",
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.empty.v1+json",
];
/// A riskhost detached signature (the `.sig` text) as an artifact.
const SIGNATURE_ARTIFACT_TYPE: &str = "application/vnd.riskhost.signature.v1";
const SIGNATURE_LAYER_MEDIA_TYPE: &str = "application/vnd.riskhost.signature.v1+text";
const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// A `.sig` text is a few hundred bytes; anything larger is not one.
const MAX_SIGNATURE_BYTES: usize = 64 << 10;

/// How riskhost authenticates to registries.
#[derive(Clone, Default)]
pub enum OciAuth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry token (e.g. a GHCR personal access token).
    Bearer(String),
}

impl std::fmt::Debug for OciAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        match self {
            OciAuth::Anonymous => f.write_str("Anonymous"),
            OciAuth::Basic { username, .. } => write!(f, "Basic({username}, ****)"),
            OciAuth::Bearer(_) => f.write_str("Bearer(****)"),
        }
    }
}

/// Settings of the client (`--oci-*` flags).
#[derive(Debug, Clone)]
pub struct OciSettings {
    /// Registries (`host:port`) reached over plain HTTP; every other one
    /// only over HTTPS.
    pub insecure_registries: Vec<String>,
    pub auth: OciAuth,
    /// The largest component pulled (`--max-component-mib`), checked
    /// against the manifest before the download.
    pub max_component_bytes: usize,
    /// Bound of one whole push or pull.
    pub timeout: Duration,
}

/// Why a push or pull failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(
        "`{reference}` is not an OCI reference (REGISTRY/REPOSITORY:TAG or @sha256:…): {reason}"
    )]
    InvalidReference { reference: String, reason: String },
    #[error("the OCI registry {registry} cannot be reached: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error(
        "the OCI registry {registry} refused access to {reference} (401/403): check --oci-username/--oci-password or --oci-token"
    )]
    Unauthorized { registry: String, reference: String },
    #[error("{0} is not in the registry (no such repository, tag or digest)")]
    NotFound(String),
    #[error(
        "the component layer of {reference} has digest {actual}, not the {expected} its manifest names"
    )]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("{reference} is not a WebAssembly component artifact: {reason}")]
    NotAComponent { reference: String, reason: String },
    #[error(
        "the component of {reference} is {size} bytes, over the limit of {max} bytes (--max-component-mib)"
    )]
    TooLarge {
        reference: String,
        size: u64,
        max: usize,
    },
    #[error("the OCI registry {registry} answered unexpectedly: {reason}")]
    Protocol { registry: String, reason: String },
}

impl OciError {
    /// The error code answers carry, and the `result` label of the pull metric.
    pub fn code(&self) -> &'static str {
        match self {
            OciError::InvalidReference { .. } => "invalid_oci_reference",
            OciError::Unreachable { .. } => "oci_unreachable",
            OciError::Unauthorized { .. } => "oci_unauthorized",
            OciError::NotFound(_) => "oci_not_found",
            OciError::DigestMismatch { .. } => "oci_digest_mismatch",
            OciError::NotAComponent { .. } => "oci_not_a_component",
            OciError::TooLarge { .. } => "oci_artifact_too_large",
            OciError::Protocol { .. } => "oci_protocol_error",
        }
    }
}

/// What a push left in the registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `REGISTRY/REPOSITORY@sha256:…` of the component's manifest.
    pub reference: String,
    /// `sha256:…` of the component bytes (riskhost's version id).
    pub component_digest: String,
    /// The tag of the signature artifact, when one was pushed.
    pub signature_tag: Option<String>,
}

/// A component pulled from a registry.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub bytes: Vec<u8>,
    /// `REGISTRY/REPOSITORY@sha256:…`: the manifest the reference resolved
    /// to, what is recorded (a tag is resolved once, here).
    pub reference: String,
    /// `sha256:…` of the component bytes, checked.
    pub component_digest: String,
    /// The `.sig` text pushed with it, if any.
    pub signature: Option<String>,
}

/// A client of OCI registries.
pub struct OciClient {
    client: Client,
    auth: RegistryAuth,
    max_bytes: usize,
    timeout: Duration,
}

impl std::fmt::Debug for OciClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciClient")
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `bytes` start like a component (not a core module): the wasm
/// magic, then the component-model version and layer (`0d 00 01 00`).
fn is_component(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0x00, 0x01, 0x00]) => Ok(()),
        Some([0, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00]) => {
            Err("the layer is a core WebAssembly module, not a component".into())
        }
        _ => Err("the layer is not WebAssembly".into()),
    }
}

impl OciClient {
    pub fn new(settings: OciSettings) -> OciClient {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(settings.insecure_registries.clone()),
            connect_timeout: Some(Duration::from_secs(5).min(settings.timeout)),
            read_timeout: Some(settings.timeout),
            ..ClientConfig::default()
        });
        let auth = match settings.auth {
            OciAuth::Anonymous => RegistryAuth::Anonymous,
            OciAuth::Basic { username, password } => RegistryAuth::Basic(username, password),
            OciAuth::Bearer(token) => RegistryAuth::Bearer(token),
        };
        OciClient {
            client,
            auth,
            max_bytes: settings.max_component_bytes,
            timeout: settings.timeout,
        }
    }

    /// Parses `oci://REGISTRY/REPO:TAG` (the scheme is optional).
    pub fn parse(reference: &str) -> Result<Reference, OciError> {
        let text = reference.strip_prefix("oci://").unwrap_or(reference);
        text.parse::<Reference>()
            .map_err(|e| OciError::InvalidReference {
                reference: reference.to_owned(),
                reason: e.to_string(),
            })
    }

    fn classify(&self, image: &Reference, error: OciDistributionError) -> OciError {
        let registry = image.registry().to_owned();
        let whole = image.whole();
        match &error {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => OciError::Unauthorized {
                registry,
                reference: whole,
            },
            OciDistributionError::ImageManifestNotFoundError(_) => OciError::NotFound(whole),
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => OciError::Unauthorized {
                registry,
                reference: whole,
            },
            OciDistributionError::ServerError { code: 404, .. } => OciError::NotFound(whole),
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    let code = format!("{:?}", e.code);
                    code.contains("Unknown") || code.contains("NameUnknown")
                }) =>
            {
                OciError::NotFound(whole)
            }
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|e| {
                    let code = format!("{:?}", e.code);
                    code.contains("Unauthorized") || code.contains("Denied")
                }) =>
            {
                OciError::Unauthorized {
                    registry,
                    reference: whole,
                }
            }
            OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
                OciError::Unreachable {
                    registry,
                    reason: error_chain(&error),
                }
            }
            _ => OciError::Protocol {
                registry,
                reason: error_chain(&error),
            },
        }
    }

    /// Pulls `reference`; counted and timed in the pull metrics.
    pub async fn pull(&self, reference: &str) -> Result<Pulled, OciError> {
        let started = Instant::now();
        let image = Self::parse(reference)?;
        let outcome = match tokio::time::timeout(self.timeout, self.pull_component(&image)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(OciError::Unreachable {
                registry: image.registry().to_owned(),
                reason: format!("no complete answer within {:?}", self.timeout),
            }),
        };
        let result = match &outcome {
            Ok(pulled) => {
                metrics::counter!("riskhost_oci_pull_bytes_total")
                    .increment(pulled.bytes.len() as u64);
                "ok"
            }
            Err(error) => error.code(),
        };
        metrics::counter!("riskhost_oci_pulls_total", "result" => result).increment(1);
        metrics::histogram!("riskhost_oci_pull_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match &outcome {
            Ok(pulled) => {
                tracing::info!(reference = %pulled.reference, digest = %pulled.component_digest, bytes = pulled.bytes.len(), signed = pulled.signature.is_some(), ms = started.elapsed().as_millis() as u64, "pulled a component")
            }
            Err(error) => tracing::warn!(%reference, %error, "cannot pull a component"),
        }
        outcome
    }

    async fn pull_component(&self, image: &Reference) -> Result<Pulled, OciError> {
        let whole = image.whole();
        let (manifest, manifest_digest) = self
            .client
            .pull_image_manifest(image, &self.auth)
            .await
            .map_err(|e| self.classify(image, e))?;
        let config_type = manifest.config.media_type.as_str();
        if config_type != CONFIG_MEDIA_TYPE && !OLD_CONFIG_MEDIA_TYPES.contains(&config_type) {
            return Err(OciError::NotAComponent {
                reference: whole,
                reason: format!("its config is `{config_type}`, not `{CONFIG_MEDIA_TYPE}`"),
            });
        }
        let layers: Vec<&OciDescriptor> = manifest
            .layers
            .iter()
            .filter(|l| l.media_type == LAYER_MEDIA_TYPE || l.media_type == OLD_LAYER_MEDIA_TYPE)
            .collect();
        let [layer] = layers.as_slice() else {
            return Err(OciError::NotAComponent {
                reference: whole,
                reason: format!(
                    "it has {} `{LAYER_MEDIA_TYPE}` layers; a component artifact has exactly one",
                    layers.len()
                ),
            });
        };
        let declared = u64::try_from(layer.size).unwrap_or(u64::MAX);
        if declared > self.max_bytes as u64 {
            return Err(OciError::TooLarge {
                reference: whole,
                size: declared,
                max: self.max_bytes,
            });
        }
        let bytes = self.read_blob(image, layer, self.max_bytes).await?;
        let actual = sha256(&bytes);
        if actual != layer.digest {
            return Err(OciError::DigestMismatch {
                reference: whole,
                expected: layer.digest.clone(),
                actual,
            });
        }
        is_component(&bytes).map_err(|reason| OciError::NotAComponent {
            reference: whole.clone(),
            reason,
        })?;
        let signature = self.pull_signature(image, &manifest_digest).await?;
        Ok(Pulled {
            bytes,
            reference: format!(
                "{}/{}@{manifest_digest}",
                image.registry(),
                image.repository()
            ),
            component_digest: actual,
            signature,
        })
    }

    /// Reads a blob, refusing one that grows past `max` bytes whatever its
    /// descriptor claimed.
    async fn read_blob(
        &self,
        image: &Reference,
        layer: &OciDescriptor,
        max: usize,
    ) -> Result<Vec<u8>, OciError> {
        let whole = image.whole();
        let mut stream = self
            .client
            .pull_blob_stream(image, layer)
            .await
            .map_err(|e| self.classify(image, e))?;
        let mut bytes = Vec::with_capacity(usize::try_from(layer.size).unwrap_or(0).min(max));
        while let Some(chunk) = stream.stream.next().await {
            let chunk = chunk.map_err(|e| {
                let text = e.to_string();
                if text.to_ascii_lowercase().contains("digest") {
                    OciError::DigestMismatch {
                        reference: whole.clone(),
                        expected: layer.digest.clone(),
                        actual: format!("other bytes ({text})"),
                    }
                } else {
                    OciError::Unreachable {
                        registry: image.registry().to_owned(),
                        reason: format!("the download broke off: {text}"),
                    }
                }
            })?;
            if bytes.len() + chunk.len() > max {
                return Err(OciError::TooLarge {
                    reference: whole,
                    size: (bytes.len() + chunk.len()) as u64,
                    max,
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// The signature pushed for the manifest `manifest_digest`, by its tag
    /// (`sha256-<hex>.sig`), which every registry serves; `None` if there
    /// is none.
    async fn pull_signature(
        &self,
        image: &Reference,
        manifest_digest: &str,
    ) -> Result<Option<String>, OciError> {
        let tag = signature_tag(manifest_digest);
        let reference = Reference::with_tag(
            image.registry().to_owned(),
            image.repository().to_owned(),
            tag,
        );
        let manifest = match self
            .client
            .pull_image_manifest(&reference, &self.auth)
            .await
        {
            Ok((manifest, _)) => manifest,
            Err(error) => {
                return match self.classify(&reference, error) {
                    OciError::NotFound(_) => Ok(None),
                    other => Err(other),
                };
            }
        };
        let Some(layer) = manifest
            .layers
            .iter()
            .find(|l| l.media_type == SIGNATURE_LAYER_MEDIA_TYPE)
        else {
            return Ok(None);
        };
        let bytes = self
            .read_blob(&reference, layer, MAX_SIGNATURE_BYTES)
            .await?;
        if sha256(&bytes) != layer.digest {
            return Err(OciError::DigestMismatch {
                reference: reference.whole(),
                expected: layer.digest.clone(),
                actual: sha256(&bytes),
            });
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| OciError::NotAComponent {
                reference: reference.whole(),
                reason: "its signature is not text".into(),
            })
    }

    /// Pushes `bytes` as a component artifact to `reference`, with its
    /// signature (the `.sig` text) as an artifact referring to it.
    /// `described` adds fields to the config (the component's `imports`
    /// and `exports`, when the caller knows them).
    pub async fn push(
        &self,
        reference: &str,
        bytes: Vec<u8>,
        signature: Option<String>,
        described: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Pushed, OciError> {
        let image = Self::parse(reference)?;
        is_component(&bytes).map_err(|reason| OciError::NotAComponent {
            reference: reference.to_owned(),
            reason,
        })?;
        let component_digest = sha256(&bytes);
        let mut config = described;
        config.insert("created".into(), chrono::Utc::now().to_rfc3339().into());
        config.insert("architecture".into(), "wasm".into());
        config.insert("os".into(), "wasip2".into());
        config.insert("layerDigests".into(), serde_json::json!([component_digest]));
        let config = Config::new(
            serde_json::to_vec(&config).unwrap_or_default(),
            CONFIG_MEDIA_TYPE.to_owned(),
            None,
        );
        let layer = ImageLayer::new(bytes, LAYER_MEDIA_TYPE.to_owned(), None);
        let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
        manifest.artifact_type = Some(CONFIG_MEDIA_TYPE.to_owned());
        tokio::time::timeout(
            self.timeout,
            self.client
                .push(&image, &[layer], config, &self.auth, Some(manifest)),
        )
        .await
        .map_err(|_| OciError::Unreachable {
            registry: image.registry().to_owned(),
            reason: format!("the push did not finish within {:?}", self.timeout),
        })?
        .map_err(|e| self.classify(&image, e))?;
        let (raw, manifest_digest) = self
            .client
            .pull_manifest_raw(&image, &self.auth, &[OCI_IMAGE_MEDIA_TYPE])
            .await
            .map_err(|e| self.classify(&image, e))?;
        let signature_tag = match signature {
            None => None,
            Some(text) => {
                let tag = signature_tag(&manifest_digest);
                let target = Reference::with_tag(
                    image.registry().to_owned(),
                    image.repository().to_owned(),
                    tag.clone(),
                );
                let config = Config::new(b"{}".to_vec(), EMPTY_CONFIG_MEDIA_TYPE.to_owned(), None);
                let annotations = BTreeMap::from([(
                    "org.opencontainers.image.title".to_owned(),
                    "riskhost detached signature".to_owned(),
                )]);
                let layer = ImageLayer::new(
                    text.into_bytes(),
                    SIGNATURE_LAYER_MEDIA_TYPE.to_owned(),
                    Some(annotations),
                );
                let mut manifest =
                    OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
                manifest.artifact_type = Some(SIGNATURE_ARTIFACT_TYPE.to_owned());
                manifest.subject = Some(OciDescriptor {
                    media_type: OCI_IMAGE_MEDIA_TYPE.to_owned(),
                    digest: manifest_digest.clone(),
                    size: raw.len() as i64,
                    ..OciDescriptor::default()
                });
                self.client
                    .push(&target, &[layer], config, &self.auth, Some(manifest))
                    .await
                    .map_err(|e| self.classify(&target, e))?;
                Some(tag)
            }
        };
        Ok(Pushed {
            reference: format!(
                "{}/{}@{manifest_digest}",
                image.registry(),
                image.repository()
            ),
            component_digest,
            signature_tag,
        })
    }
}

/// The fallback tag of the signature of the manifest `digest`.
fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_components_pass_the_header_check() {
        assert!(is_component(b"\0asm\x0d\x00\x01\x00rest").is_ok());
        assert!(
            is_component(b"\0asm\x01\x00\x00\x00")
                .unwrap_err()
                .contains("core")
        );
        assert!(is_component(b"{\"not\": \"wasm\"}").is_err());
        assert!(is_component(b"").is_err());
    }

    #[test]
    fn references_parse_with_or_without_the_scheme() {
        let a = OciClient::parse("oci://127.0.0.1:5000/models/var:1.0").expect("parse");
        assert_eq!(a.registry(), "127.0.0.1:5000");
        assert_eq!(a.repository(), "models/var");
        assert_eq!(a.tag(), Some("1.0"));
        let b = OciClient::parse("127.0.0.1:5000/models/var@sha256:0000000000000000000000000000000000000000000000000000000000000000").expect("parse");
        assert!(b.digest().is_some());
        assert!(matches!(
            OciClient::parse("oci://UPPER/Case:tag"),
            Err(OciError::InvalidReference { .. })
        ));
    }

    #[test]
    fn the_signature_tag_follows_the_cosign_convention() {
        assert_eq!(signature_tag("sha256:abc"), "sha256-abc.sig");
    }
}
