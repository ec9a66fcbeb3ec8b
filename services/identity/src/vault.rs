//! The credentials vault's cryptography: envelope encryption of connection
//! secrets.
//!
//! - Each tenant has a data key (256 random bits) per key version, stored only
//!   wrapped by a master key ([`MasterKey`]: a small trait, so a KMS can stand
//!   in for the local keyring in production). The associated data of a wrap
//!   binds the tenant and the key version, so a wrapped key moved to another
//!   tenant or version does not unwrap.
//! - A secret is sealed with XChaCha20-Poly1305 (RustCrypto) under its
//!   tenant's data key, with a random 192-bit nonce (random nonces of that
//!   size never repeat in practice) and associated data binding the tenant,
//!   the connection and the secret version ([`secret_aad`]): a ciphertext
//!   copied into another row, another tenant's row, or under another version
//!   fails authentication, which the handlers report as DATA_LOSS
//!   `SECRET_UNREADABLE` (and log for operators), never a panic.
//! - [`Keyring`] is the local [`MasterKey`]: the current key from
//!   `MOSAIC_VAULT_MASTER_KEY` (or a file named by
//!   `MOSAIC_VAULT_MASTER_KEY_FILE`), older ones from
//!   `MOSAIC_VAULT_PREVIOUS_MASTER_KEYS` so data keys wrapped before a
//!   rotation still unwrap. Each key's id is derived from the key
//!   (`local:` + 16 hex digits of a SHA-256 of it), so the database records
//!   which key wrapped what without holding anything that helps to find it.
//!
//! Clear key material is zeroized when dropped; nothing here formats a key or
//! a secret (their `Debug` says only their length).

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use mosaic_core::{ConfigError, Env, TenantId};
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

pub mod rotation;
pub(crate) mod storage;

/// `MOSAIC_VAULT_MASTER_KEY`: the master key, 32 bytes in base64.
pub const MASTER_KEY: &str = "MOSAIC_VAULT_MASTER_KEY";
/// `MOSAIC_VAULT_MASTER_KEY_FILE`: a file holding it instead (a mounted Secret).
pub const MASTER_KEY_FILE: &str = "MOSAIC_VAULT_MASTER_KEY_FILE";
/// `MOSAIC_VAULT_PREVIOUS_MASTER_KEYS`: comma-separated older master keys
/// that still unwrap (during and after a master-key rotation).
pub const PREVIOUS_MASTER_KEYS: &str = "MOSAIC_VAULT_PREVIOUS_MASTER_KEYS";

/// Bytes of a key (master or data key).
pub const KEY_BYTES: usize = 32;
/// Bytes of an XChaCha20-Poly1305 nonce, stored before each ciphertext.
const NONCE_BYTES: usize = 24;
/// Most bytes a secret may have.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// What went wrong with key material; never carries any of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The master key that wrapped a data key is not in the keyring.
    #[error("master key {0} is not configured")]
    UnknownMasterKey(String),
    /// A ciphertext did not authenticate: the wrong key, the wrong associated
    /// data (moved to another row), or damaged.
    #[error("ciphertext does not authenticate")]
    Unauthentic,
    /// Encryption itself failed (does not happen with valid keys).
    #[error("encryption failed")]
    Seal,
}

/// A 256-bit key in memory, zeroized on drop.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; KEY_BYTES]>);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    /// A fresh random key from the thread's CSPRNG.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        rand::rng().fill_bytes(key.as_mut());
        Self(key)
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; KEY_BYTES] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(array)))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.as_ref().into())
    }

    /// `nonce || ciphertext` of `plain` with associated data `aad`.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher()
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| VaultError::Seal)?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of [`DataKey::seal`]'s output, if it authenticates
    /// under this key and `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if sealed.len() < NONCE_BYTES + 16 {
            return Err(VaultError::Unauthentic);
        }
        let (nonce, body) = sealed.split_at(NONCE_BYTES);
        self.cipher()
            .decrypt(XNonce::from_slice(nonce), Payload { msg: body, aad })
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Unauthentic)
    }
}

/// Associated data of a tenant's data key: the tenant and the key version.
pub fn data_key_aad(tenant: TenantId, version: i32) -> Vec<u8> {
    let mut aad = b"mosaic-vault/data-key/v1".to_vec();
    aad.extend_from_slice(Uuid::from(tenant).as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Associated data of a secret: the tenant, the connection and the secret
/// version. A ciphertext decrypts only where all three are the ones it was
/// sealed for.
pub fn secret_aad(tenant: TenantId, connection: Uuid, secret_version: i64) -> Vec<u8> {
    let mut aad = b"mosaic-vault/secret/v1".to_vec();
    aad.extend_from_slice(Uuid::from(tenant).as_bytes());
    aad.extend_from_slice(connection.as_bytes());
    aad.extend_from_slice(&secret_version.to_be_bytes());
    aad
}

/// A data key as stored: which master key wrapped it, and how.
#[derive(Debug, Clone)]
pub struct Wrapped {
    pub master_key_id: String,
    pub bytes: Vec<u8>,
}

/// What wraps and unwraps data keys: the local [`Keyring`] here; a KMS
/// client in production would implement the same two calls.
pub trait MasterKey: Send + Sync + fmt::Debug + 'static {
    /// The id of the key that wraps now (recorded beside each wrapped key).
    fn current_id(&self) -> &str;
    /// Whether a key wrapped under `id` can be unwrapped.
    fn knows(&self, id: &str) -> bool;
    /// Wraps `key` under the current master key.
    fn wrap(&self, key: &DataKey, aad: &[u8]) -> Result<Wrapped, VaultError>;
    /// Unwraps a key wrapped under the master key `id`.
    fn unwrap(&self, id: &str, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, VaultError>;
}

/// The local master keys: the current one and the previous ones.
pub struct Keyring {
    /// `(id, key)`, the current key first.
    keys: Vec<(String, DataKey)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field(
                "ids",
                &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// The keyring from `MOSAIC_VAULT_MASTER_KEY` (or `_FILE`) and
    /// `MOSAIC_VAULT_PREVIOUS_MASTER_KEYS`. A missing or malformed key is an
    /// error naming its variable (and never showing the value).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let current = match (env.secret(MASTER_KEY)?, env.get(MASTER_KEY_FILE)?) {
            (Some(key), None) => decode_key(MASTER_KEY, key.expose())?,
            (None, Some(path)) => {
                let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::invalid(MASTER_KEY_FILE, &path, format!("unreadable: {e}"))
                })?);
                decode_key(MASTER_KEY_FILE, text.trim())?
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid_secret(
                    MASTER_KEY,
                    format!("set {MASTER_KEY} or {MASTER_KEY_FILE}, not both"),
                ));
            }
            (None, None) => {
                return Err(ConfigError::missing(
                    MASTER_KEY,
                    "the vault's master key (32 bytes in base64, e.g. `openssl rand -base64 32`; \
                     deploy/local/setup.sh writes one to .data/mosaic.env), or \
                     MOSAIC_VAULT_MASTER_KEY_FILE naming a file holding it",
                ));
            }
        };
        let mut keys = vec![current];
        if let Some(previous) = env.secret(PREVIOUS_MASTER_KEYS)? {
            for raw in previous.expose().split(',').map(str::trim) {
                if !raw.is_empty() {
                    keys.push(decode_key(PREVIOUS_MASTER_KEYS, raw)?);
                }
            }
        }
        Ok(Self::from_keys(
            keys.into_iter().map(|(_, key)| key).collect(),
        ))
    }

    /// A keyring of raw keys, the current one first (tests, benchmarks).
    pub fn from_keys(keys: Vec<DataKey>) -> Self {
        let mut ring: Vec<(String, DataKey)> = Vec::new();
        for key in keys {
            let id = key_id(&key);
            if !ring.iter().any(|(known, _)| *known == id) {
                ring.push((id, key));
            }
        }
        Self { keys: ring }
    }

    /// A shared handle, as the service holds it.
    pub fn shared(self) -> Arc<dyn MasterKey> {
        Arc::new(self)
    }

    fn key(&self, id: &str) -> Option<&DataKey> {
        self.keys
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, key)| key)
    }
}

impl MasterKey for Keyring {
    fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    fn knows(&self, id: &str) -> bool {
        self.key(id).is_some()
    }

    fn wrap(&self, key: &DataKey, aad: &[u8]) -> Result<Wrapped, VaultError> {
        let (id, master) = &self.keys[0];
        Ok(Wrapped {
            master_key_id: id.clone(),
            bytes: master.seal(key.0.as_ref(), aad)?,
        })
    }

    fn unwrap(&self, id: &str, wrapped: &[u8], aad: &[u8]) -> Result<DataKey, VaultError> {
        let master = self
            .key(id)
            .ok_or_else(|| VaultError::UnknownMasterKey(id.to_owned()))?;
        let plain = master.open(wrapped, aad)?;
        DataKey::from_slice(&plain).ok_or(VaultError::Unauthentic)
    }
}

/// The id of a master key: `local:` and 16 hex digits of SHA-256 over a
/// label and the key. It names the key; it does not help to find it.
pub fn key_id(key: &DataKey) -> String {
    let digest = Sha256::new()
        .chain_update(b"mosaic-vault/master-key-id/v1")
        .chain_update(key.0.as_ref())
        .finalize();
    let mut id = String::with_capacity(22);
    id.push_str("local:");
    for byte in &digest[..8] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// A key of 32 bytes in standard base64 (padding optional).
fn decode_key(variable: &str, raw: &str) -> Result<(String, DataKey), ConfigError> {
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(raw.trim()))
        .map_err(|_| ConfigError::invalid_secret(variable, "must be 32 bytes in base64"))?;
    let key = DataKey::from_slice(&bytes);
    bytes.zeroize();
    let key =
        key.ok_or_else(|| ConfigError::invalid_secret(variable, "must be 32 bytes in base64"))?;
    Ok((key_id(&key), key))
}

/// A new master key in base64, for `mosaic vault new-master-key`.
pub fn new_master_key() -> Zeroizing<String> {
    let key = DataKey::generate();
    Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.0.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::from(Uuid::now_v7())
    }

    #[test]
    fn a_secret_opens_only_where_it_was_sealed() {
        let key = DataKey::generate();
        let (a, b) = (tenant(), tenant());
        let (c1, c2) = (Uuid::now_v7(), Uuid::now_v7());
        let sealed = key.seal(b"hunter2", &secret_aad(a, c1, 1)).unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            key.open(&sealed, &secret_aad(a, c1, 1)).unwrap().as_slice(),
            b"hunter2"
        );
        for aad in [
            secret_aad(b, c1, 1),
            secret_aad(a, c2, 1),
            secret_aad(a, c1, 2),
        ] {
            assert_eq!(key.open(&sealed, &aad), Err(VaultError::Unauthentic));
        }
        let other = DataKey::generate();
        assert_eq!(
            other.open(&sealed, &secret_aad(a, c1, 1)),
            Err(VaultError::Unauthentic)
        );
        assert_eq!(key.open(&sealed[..10], b""), Err(VaultError::Unauthentic));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            key.open(&flipped, &secret_aad(a, c1, 1)),
            Err(VaultError::Unauthentic)
        );
    }

    #[test]
    fn the_keyring_wraps_with_the_current_key_and_unwraps_with_any() {
        let (old, new) = (DataKey::generate(), DataKey::generate());
        let before = Keyring::from_keys(vec![old.clone()]);
        let after = Keyring::from_keys(vec![new.clone(), old.clone()]);
        let data = DataKey::generate();
        let aad = data_key_aad(tenant(), 1);
        let wrapped = before.wrap(&data, &aad).unwrap();
        assert_eq!(wrapped.master_key_id, key_id(&old));
        let unwrapped = after
            .unwrap(&wrapped.master_key_id, &wrapped.bytes, &aad)
            .unwrap();
        assert_eq!(unwrapped.0.as_ref(), data.0.as_ref());
        assert_eq!(after.current_id(), key_id(&new));
        assert!(after.knows(&key_id(&old)));
        let alone = Keyring::from_keys(vec![new]);
        assert_eq!(
            alone
                .unwrap(&wrapped.master_key_id, &wrapped.bytes, &aad)
                .unwrap_err(),
            VaultError::UnknownMasterKey(key_id(&old))
        );
        let moved = data_key_aad(tenant(), 1);
        assert_eq!(
            after
                .unwrap(&wrapped.master_key_id, &wrapped.bytes, &moved)
                .unwrap_err(),
            VaultError::Unauthentic
        );
    }

    #[test]
    fn settings_name_their_variable_and_never_show_the_key() {
        let good = new_master_key();
        let ring = Keyring::from_env(&Env::from_pairs([(MASTER_KEY, good.as_str())])).unwrap();
        assert!(ring.current_id().starts_with("local:"));
        assert!(!format!("{ring:?}").contains(good.as_str()));
        let missing = Keyring::from_env(&Env::from_pairs::<&str, &str>([])).unwrap_err();
        assert_eq!(missing.name(), MASTER_KEY);
        for bad in ["short", "not base64 at all!", "AAAA"] {
            let e = Keyring::from_env(&Env::from_pairs([(MASTER_KEY, bad)])).unwrap_err();
            assert_eq!(e.name(), MASTER_KEY);
            assert!(!e.to_string().contains(bad), "{e}");
        }
        let previous = Keyring::from_env(&Env::from_pairs([
            (MASTER_KEY, good.as_str()),
            (PREVIOUS_MASTER_KEYS, "nope"),
        ]))
        .unwrap_err();
        assert_eq!(previous.name(), PREVIOUS_MASTER_KEYS);
    }
}
