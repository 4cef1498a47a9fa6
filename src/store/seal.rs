//! Secrets sealed at rest: every DeviceSecret and ProductSecret a SQL store keeps is encrypted
//! with XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) under a 32-byte master key that
//! the database never holds, so that a dump of the database (`sqlite3 .dump`, `pg_dump`, a
//! backup) is not the fleet's credentials.
//!
//! A sealed value is the text `sealed1:KEYID:HEX`, where KEYID is the key's [`KeyId`] and HEX
//! the 24-byte random nonce, the ciphertext and the 16-byte tag. The associated data is the
//! record's identity (field, product key, device name), so a sealed value copied onto another
//! row, or from a device's secret to a product's, fails to open. A value that does not open
//! is never used: the store reports it as corrupt.
//!
//! HMAC verification needs the secret itself, so secrets cannot be hashed as passwords are;
//! sealing is what protects them at rest.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use super::{FailureKind, SecretsAtRest, StoreError};
use crate::random::{Entropy, OsEntropy};

/// What a sealed value starts with (format version 1). The SQL store finds the key id at
/// characters 9 to 16 and tells sealed values by their length (over 64): see its test.
pub(crate) const PREFIX: &str = "sealed1:";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The associated data's domain, so that a sealed value of another format never opens.
const DOMAIN: &[u8] = b"iotauth sealed secret v1";
/// The most a key file read takes, in bytes.
const KEY_FILE_READ: usize = 128;

/// Which stored secret a value is: part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretField {
    /// `iotauth_devices.device_secret`.
    DeviceSecret,
    /// `iotauth_products.product_secret`.
    ProductSecret,
}

impl SecretField {
    /// The column the SQL stores keep it in.
    pub fn column(self) -> &'static str {
        match self {
            Self::DeviceSecret => "device_secret",
            Self::ProductSecret => "product_secret",
        }
    }
}

/// A master key's identifier: the first four bytes of the SHA-256 of the key, in hex (8
/// characters). Not secret: it names the key a value was sealed under, in the value and in
/// error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// A 32-byte key-encryption key. No `Clone`; `Debug` shows only its [`KeyId`]; zeroized on
/// drop.
pub struct MasterKey {
    /// The cipher keyed once (it zeroizes its key on drop).
    cipher: XChaCha20Poly1305,
    id: KeyId,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A key file could not be read or written. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read, created or written.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold one key: 64 hex digits, optionally followed by a newline.
    #[error("master key file {path}: expected 64 hex digits (32 bytes) and nothing else")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// Other users may read or write the file, or its group may write it.
    #[error(
        "master key file {path}: other users may read or write it, or its group may write it \
         (chmod 600 or 640)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
    },
    /// The random source failed.
    #[error(transparent)]
    Entropy(#[from] crate::random::EntropyError),
}

impl From<KeyFileError> for StoreError {
    fn from(e: KeyFileError) -> Self {
        let kind = match &e {
            KeyFileError::Io { source, .. } => FailureKind::of_io(source),
            KeyFileError::Exposed { .. } => FailureKind::Permission,
            KeyFileError::Malformed { .. } | KeyFileError::Entropy(_) => FailureKind::Configuration,
        };
        StoreError::failure(kind, e)
    }
}

impl MasterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        use sha2::Digest;
        let key = Zeroizing::new(bytes);
        let digest = sha2::Sha256::digest(&key[..]);
        let id = KeyId([digest[0], digest[1], digest[2], digest[3]]);
        Self {
            cipher: XChaCha20Poly1305::new(<&Key>::from(&*key)),
            id,
        }
    }

    /// A fresh random key.
    ///
    /// # Errors
    /// [`KeyFileError::Entropy`] when the random source fails.
    pub fn generate() -> Result<Self, KeyFileError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsEntropy.fill(&mut bytes[..])?;
        Ok(Self::from_bytes(*bytes))
    }

    /// The key's identifier.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Reads a key file: 64 hex digits (e.g. `openssl rand -hex 32`), optionally followed by a
    /// newline. Other users may neither read nor write it, nor may its group write it (it is
    /// checked on the open file, so it cannot be swapped between the check and the read). A
    /// symbolic link is followed (secret volumes, as Kubernetes mounts them, are links).
    ///
    /// # Errors
    /// [`KeyFileError`], naming the file.
    pub fn read_file(path: &Path) -> Result<Self, KeyFileError> {
        use std::io::Read;
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        // A regular file, before it is opened (opening a FIFO would wait for a writer), and
        // again as opened.
        let regular = |metadata: &std::fs::Metadata| {
            if metadata.is_file() {
                Ok(())
            } else {
                Err(io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file",
                )))
            }
        };
        regular(&std::fs::metadata(path).map_err(io)?)?;
        let file = std::fs::File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        regular(&metadata)?;
        if metadata.permissions().mode() & 0o026 != 0 {
            return Err(KeyFileError::Exposed {
                path: path.to_owned(),
            });
        }
        // 64 digits, a line break, and room to tell a longer file: never more than that read.
        let mut text = Zeroizing::new(Vec::with_capacity(KEY_FILE_READ));
        file.take(KEY_FILE_READ as u64)
            .read_to_end(&mut text)
            .map_err(io)?;
        let digits = text.strip_suffix(b"\n").unwrap_or(&text[..]);
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digits, &mut bytes[..]).map_err(|_| KeyFileError::Malformed {
            path: path.to_owned(),
        })?;
        Ok(Self::from_bytes(*bytes))
    }

    /// Creates a key file holding a fresh key (mode 0600); refuses to overwrite one. The file
    /// appears whole or not at all (written beside it, then linked to its name), so that a
    /// process reading it while another creates it never sees a partial key.
    ///
    /// # Errors
    /// [`KeyFileError::Io`] (of kind `AlreadyExists` when the file exists);
    /// [`KeyFileError::Entropy`].
    pub fn create_file(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsEntropy.fill(&mut bytes[..])?;
        let mut suffix = [0u8; 8];
        OsEntropy.fill(&mut suffix)?;
        let mut staged = path.as_os_str().to_owned();
        staged.push(format!(".{}.tmp", hex::encode(suffix)));
        let staged = PathBuf::from(staged);
        let placed = write_key_file(&staged, &bytes).and_then(|()| {
            match std::fs::hard_link(&staged, path) {
                // A file system without hard links (EPERM): the name is taken exclusively
                // instead; a reader may then see the file before it is complete, and fail.
                Err(e)
                    if e.kind() == std::io::ErrorKind::Unsupported
                        || e.raw_os_error() == Some(1) =>
                {
                    write_key_file(path, &bytes)
                }
                other => other,
            }
        });
        let _ = std::fs::remove_file(&staged);
        placed.map_err(io)?;
        // The name is on disk before any secret is sealed under the key.
        if let Some(directory) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(directory)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        Ok(Self::from_bytes(*bytes))
    }
}

/// Writes `key` in hex and a line break to a new file at `path` (mode 0600), on disk.
fn write_key_file(path: &Path, key: &[u8; 32]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let text = Zeroizing::new(hex::encode(key));
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// The keys a store seals and opens with: one that seals, and older ones that still open
/// (while a store is re-sealed under a new key, `iotauth store rekey`).
#[derive(Debug)]
pub struct Keyring {
    sealing: MasterKey,
    opening: Vec<MasterKey>,
}

/// A stored secret did not open: a wrong key, a value moved from another row, or an edit.
#[derive(Debug, thiserror::Error)]
#[error(
    "a stored {column} does not open with the master key {key_id} (copied from another row, edited, or sealed under another key with the same id)"
)]
struct Unopened {
    column: &'static str,
    key_id: KeyId,
}

/// A stored secret was sealed under a key the store was not given.
#[derive(Debug, thiserror::Error)]
#[error(
    "a stored {column} is sealed under master key {key_id}, which was not given (--master-key-file, --previous-key-file)"
)]
pub(crate) struct UnknownKey {
    pub(crate) column: &'static str,
    pub(crate) key_id: String,
}

/// A stored secret is in clear in a store that seals: written by something that is not this
/// crate with the key (an older version, or someone with write access to the database).
#[derive(Debug, thiserror::Error)]
#[error("a stored {column} is not sealed, in a store whose secrets are sealed")]
struct NotSealed {
    column: &'static str,
}

impl Keyring {
    /// Seals with `sealing`, opens with it and with each of `previous`.
    pub fn new(sealing: MasterKey, previous: Vec<MasterKey>) -> Self {
        Self {
            sealing,
            opening: previous,
        }
    }

    /// The key new values are sealed under.
    pub fn sealing_key_id(&self) -> KeyId {
        self.sealing.id
    }

    /// Whether a value sealed under `id` opens with this keyring.
    pub(crate) fn has(&self, id: &str) -> bool {
        self.key(id).is_some()
    }

    fn key(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.sealing)
            .chain(&self.opening)
            .find(|key| key.id.to_string() == id)
    }

    /// `secret` sealed under the sealing key, bound to its record: `identity` is (product key,
    /// device name), the device name empty for a product's secret. For adapters that keep
    /// secrets elsewhere than the SQL stores.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the random source fails.
    pub fn seal(
        &self,
        field: SecretField,
        identity: (&str, &str),
        secret: &str,
    ) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsEntropy
            .fill(&mut nonce)
            .map_err(|e| StoreError::failure(FailureKind::Unavailable, e))?;
        // The buffer is sized before the plaintext goes in, and zeroized: no stray copy.
        let mut buffer = Zeroizing::new(secret.as_bytes().to_vec());
        let tag = self
            .sealing
            .cipher
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                &associated_data(field, identity),
                buffer.as_mut_slice().into(),
            )
            .map_err(|_| StoreError::failure(FailureKind::Unavailable, SealFailed))?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + buffer.len() + TAG_LEN);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&buffer);
        sealed.extend_from_slice(&tag);
        Ok(format!(
            "{PREFIX}{}:{}",
            self.sealing.id,
            hex::encode(sealed)
        ))
    }

    /// The secret text of a stored value, passed to `accept` (which copies it into the
    /// secret's own zeroized cell); the opened bytes are zeroized when it returns.
    ///
    /// # Errors
    /// [`FailureKind::Corrupt`] when the value is not sealed, or does not open (another row's
    /// value, an edit); [`FailureKind::Configuration`] when it is sealed under a key not given;
    /// what `accept` returns.
    pub fn open<T>(
        &self,
        field: SecretField,
        identity: (&str, &str),
        stored: &str,
        accept: impl FnOnce(&str) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let column = field.column();
        let corrupt = || StoreError::failure(FailureKind::Corrupt, NotSealed { column });
        let (key_id, payload) = sealed_parts(stored).ok_or_else(corrupt)?;
        let key = self.key(key_id).ok_or_else(|| {
            StoreError::failure(
                FailureKind::Configuration,
                UnknownKey {
                    column,
                    key_id: key_id.to_owned(),
                },
            )
        })?;
        let unopened = || {
            StoreError::failure(
                FailureKind::Corrupt,
                Unopened {
                    column,
                    key_id: key.id,
                },
            )
        };
        let mut bytes = Zeroizing::new(hex::decode(payload).map_err(|_| unopened())?);
        if bytes.len() < NONCE_LEN + TAG_LEN + 1 {
            return Err(unopened());
        }
        let (nonce, rest) = bytes.split_at_mut(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let nonce = XNonce::try_from(&nonce[..]).map_err(|_| unopened())?;
        let tag = Tag::try_from(&tag[..]).map_err(|_| unopened())?;
        key.cipher
            .decrypt_inout_detached(
                &nonce,
                &associated_data(field, identity),
                (&mut *ciphertext).into(),
                &tag,
            )
            .map_err(|_| unopened())?;
        accept(std::str::from_utf8(ciphertext).map_err(|_| unopened())?)
    }
}

/// Sealing failed (the cipher refused the input: never for a secret of at most 64 bytes).
#[derive(Debug, thiserror::Error)]
#[error("a secret could not be sealed")]
struct SealFailed;

/// The key id and hex payload of a sealed value; `None` for a value in clear (a secret is at
/// most 64 characters; a sealed value is longer).
pub(crate) fn sealed_parts(stored: &str) -> Option<(&str, &str)> {
    if stored.len() <= 64 {
        return None;
    }
    stored.strip_prefix(PREFIX)?.split_once(':')
}

/// The associated data: the domain, the field and the record's identity, each length-prefixed
/// so that no two identities share an encoding.
fn associated_data(field: SecretField, (product_key, device_name): (&str, &str)) -> Vec<u8> {
    let mut data = DOMAIN.to_vec();
    for part in [field.column(), product_key, device_name] {
        // Identifiers are at most 64 bytes; a longer part would not fit the prefix.
        let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
        data.extend_from_slice(&len.to_be_bytes());
        data.extend_from_slice(part.as_bytes());
    }
    data
}

/// The keyring `config`'s files make, without the default: `None` when no master key file is
/// given.
///
/// # Errors
/// [`KeyFileError`] for a file that cannot be read.
pub(crate) fn given_keyring(config: &SecretsAtRest) -> Result<Option<Keyring>, KeyFileError> {
    let Some(path) = &config.master_key_file else {
        return Ok(None);
    };
    let sealing = MasterKey::read_file(path)?;
    Ok(Some(Keyring::new(sealing, previous_keys(config)?)))
}

/// The keys of `config`'s previous key files.
///
/// # Errors
/// [`KeyFileError`] for a file that cannot be read.
pub(crate) fn previous_keys(config: &SecretsAtRest) -> Result<Vec<MasterKey>, KeyFileError> {
    config
        .previous_key_files
        .iter()
        .map(|path| MasterKey::read_file(path))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::new(MasterKey::from_bytes([7; 32]), Vec::new())
    }

    fn opened(
        ring: &Keyring,
        field: SecretField,
        id: (&str, &str),
        stored: &str,
    ) -> Result<String, StoreError> {
        ring.open(field, id, stored, |text| Ok(text.to_owned()))
    }

    #[test]
    fn a_sealed_secret_opens_only_on_its_own_row_and_field() {
        let ring = keyring();
        let sealed = ring
            .seal(SecretField::DeviceSecret, ("a1pk", "dev1"), "s3cret")
            .unwrap();
        assert!(!sealed.contains("s3cret"));
        assert!(sealed.starts_with(&format!("sealed1:{}:", ring.sealing_key_id())));
        let field = SecretField::DeviceSecret;
        assert_eq!(
            opened(&ring, field, ("a1pk", "dev1"), &sealed).unwrap(),
            "s3cret"
        );
        for (field, identity) in [
            (SecretField::DeviceSecret, ("a1pk", "dev2")),
            (SecretField::DeviceSecret, ("a1pj", "dev1")),
            (SecretField::ProductSecret, ("a1pk", "dev1")),
            // Length prefixes: ("a1pk", "dev1") is not ("a1pkd", "ev1").
            (SecretField::DeviceSecret, ("a1pkd", "ev1")),
        ] {
            let e = opened(&ring, field, identity, &sealed).unwrap_err();
            assert_eq!(e.failure_kind(), Some(FailureKind::Corrupt), "{identity:?}");
            assert!(!crate::ErrorChain(&e).to_string().contains("s3cret"));
        }
    }

    #[test]
    fn a_value_under_another_key_in_clear_or_edited_does_not_open() {
        let ring = keyring();
        let other = Keyring::new(MasterKey::from_bytes([8; 32]), Vec::new());
        let id = ("a1pk", "dev1");
        let field = SecretField::DeviceSecret;
        let sealed = other.seal(field, id, "s3cret").unwrap();
        let e = opened(&ring, field, id, &sealed).unwrap_err();
        assert_eq!(e.failure_kind(), Some(FailureKind::Configuration));
        assert!(
            crate::ErrorChain(&e)
                .to_string()
                .contains(&other.sealing_key_id().to_string())
        );
        // Both keys: the old value opens, new values are sealed under the new key.
        let both = Keyring::new(
            MasterKey::from_bytes([7; 32]),
            vec![MasterKey::from_bytes([8; 32])],
        );
        assert_eq!(opened(&both, field, id, &sealed).unwrap(), "s3cret");
        let e = opened(&ring, field, id, "s3cret").unwrap_err();
        assert_eq!(e.failure_kind(), Some(FailureKind::Corrupt));
        let mut edited = ring.seal(field, id, "s3cret").unwrap();
        let last = edited.pop().unwrap();
        edited.push(if last == '0' { '1' } else { '0' });
        let e = opened(&ring, field, id, &edited).unwrap_err();
        assert_eq!(e.failure_kind(), Some(FailureKind::Corrupt));
        for garbage in [
            "sealed1:zz",
            &format!("sealed1:{}:{}", ring.sealing_key_id(), "x".repeat(80)),
        ] {
            assert!(opened(&ring, field, id, garbage).is_err());
        }
    }

    #[test]
    fn a_key_file_is_created_private_read_back_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("iotauth-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.key");
        let _ = std::fs::remove_file(&path);
        let key = MasterKey::create_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(MasterKey::read_file(&path).unwrap().id(), key.id());
        assert!(MasterKey::create_file(&path).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!format!("{key:?}").contains(text.trim()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            MasterKey::read_file(&path),
            Err(KeyFileError::Exposed { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "abcd\n").unwrap();
        assert!(matches!(
            MasterKey::read_file(&path),
            Err(KeyFileError::Malformed { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
