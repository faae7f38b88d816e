//! Encryption at rest for connections and secrets kept in the metadata store.
//!
//! The format is Fernet (AES-128-CBC + HMAC-SHA256, base64 tokens), as Airflow uses for
//! its `fernet_key`, so the operator's key is a familiar 32-byte url-safe base64
//! string. Several comma-separated keys may be given: the first encrypts, all decrypt,
//! which is how a key is rotated (add the new key first, re-save, drop the old one).

use fernet::{Fernet, MultiFernet};

/// The environment variable (and `fernet_key` in sluice.toml) holding the key(s).
pub const KEY_VARIABLE: &str = "SLUICE_FERNET_KEY";

pub struct Vault {
    keys: MultiFernet,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(***)")
    }
}

impl Vault {
    /// Keys separated by commas; each must be a Fernet key. The error never shows a key.
    pub fn new(keys: &str) -> Result<Vault, String> {
        let mut parsed = Vec::new();
        for (i, k) in keys.split(',').map(str::trim).enumerate() {
            if k.is_empty() {
                continue;
            }
            parsed.push(Fernet::new(k).ok_or_else(|| {
                format!(
                    "{KEY_VARIABLE}: key {} is not a Fernet key (32 bytes, url-safe base64; generate one with `sluice secrets generate-key`)",
                    i + 1
                )
            })?);
        }
        if parsed.is_empty() {
            return Err(format!("{KEY_VARIABLE} is empty"));
        }
        Ok(Vault {
            keys: MultiFernet::new(parsed),
        })
    }

    pub fn generate_key() -> String {
        Fernet::generate_key()
    }

    pub fn encrypt(&self, plain: &str) -> String {
        self.keys.encrypt(plain.as_bytes())
    }

    pub fn decrypt(&self, token: &str) -> Result<String, String> {
        let bytes = self.keys.decrypt(token).map_err(|_| {
            format!("cannot decrypt: it was encrypted with a key that is not in {KEY_VARIABLE}")
        })?;
        String::from_utf8(bytes).map_err(|_| "decrypted value is not UTF-8".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rotation() {
        let old = Vault::generate_key();
        let new = Vault::generate_key();
        let token = Vault::new(&old).unwrap().encrypt("pa55word");
        assert!(!token.contains("pa55word"));
        // The rotated key list still reads old tokens.
        let rotated = Vault::new(&format!("{new}, {old}")).unwrap();
        assert_eq!(rotated.decrypt(&token).unwrap(), "pa55word");
        let err = Vault::new(&new).unwrap().decrypt(&token).unwrap_err();
        assert!(err.contains("SLUICE_FERNET_KEY"), "{err}");
        let err = Vault::new("not-a-key").unwrap_err();
        assert!(
            err.contains("key 1 is not a Fernet key") && !err.contains("not-a-key"),
            "{err}"
        );
    }
}
