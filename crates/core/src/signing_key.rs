//! The server's ed25519 signing key, kept as PKCS#8 DER in the data directory.

use ruma::signatures::Ed25519KeyPair;

#[derive(Debug, thiserror::Error)]
#[error("invalid signing key: {0}")]
pub struct KeyError(String);

/// A fresh PKCS#8 document for a new key.
pub fn generate() -> Vec<u8> {
    Ed25519KeyPair::generate().to_vec()
}

pub fn load(der: &[u8], version: &str) -> Result<Ed25519KeyPair, KeyError> {
    Ed25519KeyPair::from_der(der, version.to_owned()).map_err(|e| KeyError(e.to_string()))
}
