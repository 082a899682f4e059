//! The session key ring: AEAD keys for sealing/opening tokens, the naming salt, and the key file.
//!
//! # Key file format
//!
//! UTF-8 text, one directive per line. Blank lines and lines whose first non-blank
//! character is `#` are ignored. Fields are separated by spaces or tabs.
//!
//! ```text
//! # Sessile session keys. Keep this file secret (chmod 600).
//! salt 3q2+7wAAAAAAAAAAAAAAAA
//! key 2 8J+YgPCfmIDwn5iA8J+YgPCfmIDwn5iA8J+YgPCfmIA
//! key 1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
//! ```
//!
//! - `salt <base64>`: optional, at most once, at least 16 bytes. A stable secret used for
//!   generated session names and for the keyed hashes of scopes, backends and endpoint
//!   identities inside tokens. Keep it across key rotations: changing it ends every
//!   session and renames every generated session name. When absent, a fixed built-in
//!   salt is used (generated names are then guessable by anyone who knows the scheme).
//! - `key <id> <base64>`: an AES-256-GCM key of exactly 32 bytes; `<id>` is a decimal
//!   `u32`, unique in the file. The **first** `key` line is the current key, which seals
//!   new tokens; later keys are only used to open tokens sealed before a rotation. At
//!   least one key is required.
//! - Base64 may use the standard (`+/`) or URL-safe (`-_`) alphabet, padded or not.
//!
//! To rotate: add a new `key` line with an unused id **above** the current one, deploy
//! the file to every replica, and remove the old line once its tokens have expired
//! ([`KeyRing::with_new_current_key`] does the first step).
//!
//! On unix, [`KeyRing::load`] refuses a file that is readable or writable by group or
//! others.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ring::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Name of the key ring file inside the state directory used by [`KeyRing::load_or_create`].
pub const KEY_FILE_NAME: &str = "session-keys";

/// Salt used when the key file has no `salt` line.
const BUILTIN_SALT: &[u8] = b"sessile/builtin-naming-salt/v1";
/// Minimum length of a `salt` line, in bytes.
const MIN_SALT_LEN: usize = 16;
/// Length of a freshly generated salt, in bytes.
const GENERATED_SALT_LEN: usize = 32;
/// AES-256-GCM key length.
const KEY_LEN: usize = 32;
/// Path shown in errors from [`KeyRing::parse`], which has no file.
const INLINE_PATH: &str = "<key ring text>";

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_encode_padding(true).with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT);
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT);

/// Errors from parsing, loading or creating a key ring. Every message names the file
/// (or `<key ring text>` for [`KeyRing::parse`]) and, for syntax errors, the line.
#[derive(thiserror::Error, Debug)]
pub enum KeyRingError {
    /// A line of the key file is wrong.
    #[error("{}:{line}: {message}", .path.display())]
    Syntax {
        /// The key file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// The file has no `key` line.
    #[error("{}: no `key <id> <base64>` line; at least one key is required", .path.display())]
    NoKey {
        /// The key file.
        path: PathBuf,
    },
    /// The file is readable or writable by group or others.
    #[error(
        "{}: key file is accessible by group or others (mode {mode:03o}); \
         run `chmod 600 {}` so that only the gateway's user can read it",
        .path.display(), .path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// The permission bits found.
        mode: u32,
    },
    /// The file is not valid UTF-8.
    #[error("{}: key file is not valid UTF-8", .path.display())]
    NotUtf8 {
        /// The key file.
        path: PathBuf,
    },
    /// Reading, creating or writing a file or directory failed.
    #[error("{}: cannot {action}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done, e.g. "read key file".
        action: &'static str,
        /// The underlying error.
        source: io::Error,
    },
}

/// One AEAD key of the ring.
#[derive(Clone)]
pub(crate) struct RingKey {
    pub(crate) id: u32,
    raw: [u8; KEY_LEN],
    pub(crate) aead: LessSafeKey,
}

struct Inner {
    /// `keys[0]` is the current key.
    keys: Vec<RingKey>,
    salt: Vec<u8>,
    /// Whether `salt` came from the file (and must be written back by `to_file_text`).
    explicit_salt: bool,
}

/// The operator's session keys: the current key that seals new tokens, older keys that
/// are still accepted when opening, and the naming salt.
///
/// Cheap to clone (shared, immutable). `Debug` prints key ids only, never key material.
/// See the [module documentation](self) for the file format.
#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<Inner>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<u32> = self.inner.keys.iter().map(|k| k.id).collect();
        f.debug_struct("KeyRing")
            .field("current_key_id", &self.current_key_id())
            .field("key_ids", &ids)
            .field("explicit_salt", &self.inner.explicit_salt)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Whether both are the same loaded ring (clones share it; a reload makes a new one).
    pub fn same_ring(&self, other: &KeyRing) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Parses key file text (format in the [module documentation](self)).
    ///
    /// Errors name `<key ring text>` as the path; [`KeyRing::load`] names the real file.
    pub fn parse(text: &str) -> Result<KeyRing, KeyRingError> {
        parse_at(text, Path::new(INLINE_PATH))
    }

    /// Reads and parses the key file at `path`.
    ///
    /// On unix the file must not be accessible by group or others
    /// (`mode & 0o077 == 0`); otherwise this fails with [`KeyRingError::Permissions`],
    /// whose message tells the user to `chmod 600` it.
    pub fn load(path: &Path) -> Result<KeyRing, KeyRingError> {
        let io_err = |action, source| KeyRingError::Io { path: path.to_path_buf(), action, source };
        let mut file = std::fs::File::open(path).map_err(|e| io_err("open key file", e))?;
        // Check the permissions of the file we actually opened (no check/open race).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = file.metadata().map_err(|e| io_err("stat key file", e))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyRingError::Permissions { path: path.to_path_buf(), mode });
            }
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut file, &mut bytes).map_err(|e| io_err("read key file", e))?;
        let text = String::from_utf8(bytes).map_err(|_| KeyRingError::NotUtf8 { path: path.to_path_buf() })?;
        parse_at(&text, path)
    }

    /// Loads `state_dir/session-keys`, or creates it with a fresh random ring when it
    /// does not exist.
    ///
    /// Creation makes `state_dir` (mode 0700 on unix) if needed, writes the ring to a
    /// temporary file created with mode 0600, syncs it, and publishes it atomically under
    /// the final name. Publication never overwrites an existing key file: if another
    /// process created one first, that file is loaded and returned instead, so replicas
    /// sharing a state directory agree on one ring.
    pub fn load_or_create(state_dir: &Path) -> Result<KeyRing, KeyRingError> {
        let path = state_dir.join(KEY_FILE_NAME);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return KeyRing::load(&path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(KeyRingError::Io { path, action: "stat key file", source: e });
            }
        }
        create_dir_private(state_dir)?;
        let ring = KeyRing::generate();
        match publish_new_file(state_dir, &path, ring.to_file_text().as_bytes())? {
            Published::Created => Ok(ring),
            Published::AlreadyExisted => KeyRing::load(&path),
        }
    }

    /// A new ring with a random current key (id 1) and a random 32-byte salt.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn generate() -> KeyRing {
        let rng = SystemRandom::new();
        let mut salt = vec![0u8; GENERATED_SALT_LEN];
        rng.fill(&mut salt).expect("operating system random number generator failed");
        KeyRing::from_parts(vec![random_key(&rng, 1)], salt, true)
    }

    /// Key rotation: a ring whose current key is a new random key with id one above the
    /// highest id in this ring; every existing key is kept (accepted for opening) and the
    /// salt is unchanged.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn with_new_current_key(&self) -> KeyRing {
        let rng = SystemRandom::new();
        let max = self.inner.keys.iter().map(|k| k.id).max().unwrap_or(0);
        let id = match max.checked_add(1) {
            Some(id) => id,
            // Only reachable when someone used id u32::MAX: take the smallest free id.
            None => (0..=u32::MAX).find(|id| self.inner.keys.iter().all(|k| k.id != *id)).unwrap_or(0),
        };
        let mut keys = Vec::with_capacity(self.inner.keys.len() + 1);
        keys.push(random_key(&rng, id));
        keys.extend(self.inner.keys.iter().cloned());
        KeyRing::from_parts(keys, self.inner.salt.clone(), self.inner.explicit_salt)
    }

    /// The ring in the key file format; [`KeyRing::parse`] of the result gives an
    /// equivalent ring. Contains the secret keys: write it only to a 0600 file.
    pub fn to_file_text(&self) -> String {
        let mut out = String::with_capacity(160 + 56 * self.inner.keys.len());
        out.push_str("# Sessile session keys. Keep this file secret (chmod 600).\n");
        out.push_str("# The first `key` line seals new tokens; later keys are still accepted.\n");
        out.push_str("# Keep `salt` across rotations: changing it ends every session.\n");
        if self.inner.explicit_salt {
            out.push_str("salt ");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(&self.inner.salt));
            out.push('\n');
        }
        for key in &self.inner.keys {
            out.push_str("key ");
            out.push_str(&key.id.to_string());
            out.push(' ');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(key.raw));
            out.push('\n');
        }
        out
    }

    /// Id of the key that seals new tokens.
    pub fn current_key_id(&self) -> u32 {
        self.current().id
    }

    /// Ids of every key in the ring, current first.
    pub fn key_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.inner.keys.iter().map(|k| k.id)
    }

    /// The salt for [`crate::keyed_hash`] and [`crate::generated_session_name`]: the
    /// file's `salt`, or a fixed built-in salt when the file has none.
    pub fn naming_salt(&self) -> &[u8] {
        &self.inner.salt
    }

    pub(crate) fn current(&self) -> &RingKey {
        // Every constructor guarantees at least one key.
        &self.inner.keys[0]
    }

    pub(crate) fn find(&self, id: u32) -> Option<&RingKey> {
        self.inner.keys.iter().find(|k| k.id == id)
    }

    fn from_parts(keys: Vec<RingKey>, salt: Vec<u8>, explicit_salt: bool) -> KeyRing {
        assert!(!keys.is_empty(), "a key ring needs at least one key");
        KeyRing { inner: Arc::new(Inner { keys, salt, explicit_salt }) }
    }
}

fn make_key(id: u32, raw: [u8; KEY_LEN]) -> RingKey {
    let unbound = UnboundKey::new(&AES_256_GCM, &raw).expect("32 bytes is a valid AES-256-GCM key");
    RingKey { id, raw, aead: LessSafeKey::new(unbound) }
}

fn random_key(rng: &SystemRandom, id: u32) -> RingKey {
    let mut raw = [0u8; KEY_LEN];
    rng.fill(&mut raw).expect("operating system random number generator failed");
    make_key(id, raw)
}

fn decode_b64(text: &str) -> Option<Vec<u8>> {
    STANDARD_LENIENT.decode(text).ok().or_else(|| URL_SAFE_LENIENT.decode(text).ok())
}

fn parse_at(text: &str, path: &Path) -> Result<KeyRing, KeyRingError> {
    let syntax = |line: usize, message: String| KeyRingError::Syntax { path: path.to_path_buf(), line, message };
    let mut keys: Vec<(usize, RingKey)> = Vec::new();
    let mut salt: Option<(usize, Vec<u8>)> = None;

    for (idx, raw_line) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split([' ', '\t']).filter(|f| !f.is_empty());
        let directive = fields.next().unwrap_or_default();
        match directive {
            "salt" => {
                let Some(value) = fields.next() else {
                    return Err(syntax(line_no, "`salt` needs a base64 value: `salt <base64>`".into()));
                };
                if fields.next().is_some() {
                    return Err(syntax(line_no, "unexpected text after the salt value".into()));
                }
                if let Some((first, _)) = &salt {
                    return Err(syntax(line_no, format!("duplicate `salt` line (first on line {first})")));
                }
                let Some(bytes) = decode_b64(value) else {
                    return Err(syntax(line_no, "salt is not valid base64".into()));
                };
                if bytes.len() < MIN_SALT_LEN {
                    return Err(syntax(
                        line_no,
                        format!("salt is {} bytes; at least {MIN_SALT_LEN} are required", bytes.len()),
                    ));
                }
                salt = Some((line_no, bytes));
            }
            "key" => {
                let (Some(id_text), Some(value)) = (fields.next(), fields.next()) else {
                    return Err(syntax(line_no, "`key` needs an id and a base64 value: `key <id> <base64>`".into()));
                };
                if fields.next().is_some() {
                    return Err(syntax(line_no, "unexpected text after the key value".into()));
                }
                let id: u32 = id_text.parse().map_err(|_| {
                    syntax(line_no, format!("key id `{id_text}` is not a number between 0 and {}", u32::MAX))
                })?;
                if let Some((first, _)) = keys.iter().find(|(_, k)| k.id == id) {
                    return Err(syntax(line_no, format!("duplicate key id {id} (first on line {first})")));
                }
                // Never echo key material in errors.
                let Some(bytes) = decode_b64(value) else {
                    return Err(syntax(line_no, format!("key {id} is not valid base64")));
                };
                let raw: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                    syntax(line_no, format!("key {id} is {} bytes; exactly {KEY_LEN} are required", bytes.len()))
                })?;
                keys.push((line_no, make_key(id, raw)));
            }
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(syntax(
                    line_no,
                    format!("unknown directive `{shown}`; expected `key`, `salt` or a `#` comment"),
                ));
            }
        }
    }

    if keys.is_empty() {
        return Err(KeyRingError::NoKey { path: path.to_path_buf() });
    }
    let (salt, explicit) = match salt {
        Some((_, s)) => (s, true),
        None => (BUILTIN_SALT.to_vec(), false),
    };
    Ok(KeyRing::from_parts(keys.into_iter().map(|(_, k)| k).collect(), salt, explicit))
}

fn create_dir_private(dir: &Path) -> Result<(), KeyRingError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| KeyRingError::Io {
        path: dir.to_path_buf(),
        action: "create state directory",
        source,
    })
}

enum Published {
    Created,
    AlreadyExisted,
}

/// Writes `contents` to a fresh 0600 temporary file in `dir`, then moves it to `path`
/// without ever overwriting an existing `path`.
fn publish_new_file(dir: &Path, path: &Path, contents: &[u8]) -> Result<Published, KeyRingError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp =
        dir.join(format!(".{KEY_FILE_NAME}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = write_private(&tmp, contents).and_then(|()| link_no_clobber(&tmp, path));
    // The temporary name is gone after a rename; after a hard link or a failure, remove it.
    let _ = std::fs::remove_file(&tmp);
    let published = result?;
    // Make the new directory entry durable; failure here is not fatal.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(published)
}

fn write_private(tmp: &Path, contents: &[u8]) -> Result<(), KeyRingError> {
    let io_err = |action, source| KeyRingError::Io { path: tmp.to_path_buf(), action, source };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(tmp).map_err(|e| io_err("create temporary key file", e))?;
    file.write_all(contents).map_err(|e| io_err("write temporary key file", e))?;
    file.sync_all().map_err(|e| io_err("sync temporary key file", e))
}

/// Atomically makes `tmp`'s contents appear at `path` unless `path` exists.
///
/// A hard link fails with `AlreadyExists` instead of replacing the target, which a plain
/// rename would do; on file systems without hard links we fall back to rename.
fn link_no_clobber(tmp: &Path, path: &Path) -> Result<Published, KeyRingError> {
    match std::fs::hard_link(tmp, path) {
        Ok(()) => Ok(Published::Created),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Published::AlreadyExisted),
        Err(_) => std::fs::rename(tmp, path).map(|()| Published::Created).map_err(|source| KeyRingError::Io {
            path: path.to_path_buf(),
            action: "publish key file",
            source,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B_URLSAFE_NOPAD: &str = "_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-8";

    /// A unique directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);
    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sessile-session-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn syntax_err(text: &str) -> (usize, String, String) {
        match KeyRing::parse(text) {
            Err(e @ KeyRingError::Syntax { .. }) => {
                let shown = e.to_string();
                let KeyRingError::Syntax { line, message, .. } = e else { unreachable!() };
                (line, message, shown)
            }
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn parses_keys_salt_comments_and_both_alphabets() {
        let text = format!(
            "# comment\n\n   \nsalt 3q2+7wAAAAAAAAAAAAAAAA\r\nkey 7 {KEY_B_URLSAFE_NOPAD}\n\t# indented comment\nkey 3\t{KEY_A}\n"
        );
        let ring = KeyRing::parse(&text).unwrap();
        assert_eq!(ring.current_key_id(), 7);
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), vec![7, 3]);
        assert_eq!(ring.naming_salt().len(), 16);
        assert_eq!(&ring.naming_salt()[..4], &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn key_padded_urlsafe_and_unpadded_standard_are_equivalent() {
        let a = KeyRing::parse(&format!("key 1 {KEY_A}")).unwrap();
        let b = KeyRing::parse(&format!("key 1 {}", KEY_A.trim_end_matches('='))).unwrap();
        assert_eq!(a.to_file_text(), b.to_file_text());
        let c = KeyRing::parse("key 1 ____________________________________________").unwrap_err();
        assert!(c.to_string().contains("bytes"), "{c}");
        let d = KeyRing::parse(&format!("key 1 {KEY_B_URLSAFE_NOPAD}=")).unwrap();
        assert_eq!(d.current_key_id(), 1);
    }

    #[test]
    fn builtin_salt_when_absent() {
        let a = KeyRing::parse(&format!("key 1 {KEY_A}")).unwrap();
        assert_eq!(a.naming_salt(), BUILTIN_SALT);
        assert!(!a.to_file_text().contains("salt "));
    }

    #[test]
    fn error_bad_base64() {
        let (line, msg, shown) = syntax_err(&format!("key 1 {KEY_A}\n\nkey 2 not*base64!\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("not valid base64"), "{msg}");
        assert!(shown.starts_with("<key ring text>:3: "), "{shown}");
        let (line, msg, _) = syntax_err("salt !!!!\n");
        assert_eq!(line, 1);
        assert!(msg.contains("salt is not valid base64"), "{msg}");
    }

    #[test]
    fn error_wrong_key_length() {
        let (line, msg, _) = syntax_err("# c\nkey 1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==\n");
        assert_eq!(line, 2);
        assert!(msg.contains("31 bytes") && msg.contains("exactly 32"), "{msg}");
    }

    #[test]
    fn error_short_salt() {
        let (line, msg, _) = syntax_err(&format!("key 1 {KEY_A}\nsalt AAECAw==\n"));
        assert_eq!(line, 2);
        assert!(msg.contains("4 bytes") && msg.contains("at least 16"), "{msg}");
    }

    #[test]
    fn error_duplicate_id_and_salt() {
        let (line, msg, _) = syntax_err(&format!("key 4 {KEY_A}\nkey 5 {KEY_A}\nkey 4 {KEY_B_URLSAFE_NOPAD}\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("duplicate key id 4") && msg.contains("line 1"), "{msg}");
        let s = "3q2+7wAAAAAAAAAAAAAAAA";
        let (line, msg, _) = syntax_err(&format!("salt {s}\nkey 1 {KEY_A}\nsalt {s}\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("duplicate `salt`"), "{msg}");
    }

    #[test]
    fn error_no_key() {
        for text in ["", "# only a comment\n", "salt 3q2+7wAAAAAAAAAAAAAAAA\n"] {
            let err = KeyRing::parse(text).unwrap_err();
            assert!(matches!(err, KeyRingError::NoKey { .. }), "{err:?}");
            assert!(err.to_string().contains("at least one key"), "{err}");
        }
    }

    #[test]
    fn error_unknown_directive_bad_id_and_arity() {
        let (line, msg, _) = syntax_err(&format!("key 1 {KEY_A}\nkeys 2 {KEY_A}\n"));
        assert_eq!(line, 2);
        assert!(msg.contains("unknown directive `keys`"), "{msg}");
        let (line, msg, _) = syntax_err(&format!("key -1 {KEY_A}\n"));
        assert_eq!(line, 1);
        assert!(msg.contains("key id `-1`"), "{msg}");
        let (_, msg, _) = syntax_err(&format!("key 4294967296 {KEY_A}\n"));
        assert!(msg.contains("not a number"), "{msg}");
        let (_, msg, _) = syntax_err("key 1\n");
        assert!(msg.contains("needs an id and a base64 value"), "{msg}");
        let (_, msg, _) = syntax_err(&format!("key 1 {KEY_A} extra\n"));
        assert!(msg.contains("unexpected text"), "{msg}");
        let (_, msg, _) = syntax_err("salt\n");
        assert!(msg.contains("needs a base64 value"), "{msg}");
        let (_, msg, _) = syntax_err("salt 3q2+7wAAAAAAAAAAAAAAAA x\n");
        assert!(msg.contains("unexpected text"), "{msg}");
    }

    #[test]
    fn errors_never_echo_key_material() {
        let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"; // 27 bytes
        let (_, _, shown) = syntax_err(&format!("key 1 {secret}\n"));
        assert!(!shown.contains(secret), "{shown}");
    }

    #[test]
    fn debug_does_not_print_secrets() {
        let ring = KeyRing::parse(&format!("salt 3q2+7wAAAAAAAAAAAAAAAA\nkey 9 {KEY_A}")).unwrap();
        let dbg = format!("{ring:?}");
        assert!(dbg.contains("current_key_id: 9"), "{dbg}");
        assert!(!dbg.contains("AAECAw") && !dbg.contains("3q2"), "{dbg}");
        // No raw byte arrays either.
        assert!(!dbg.contains("[0, 1, 2"), "{dbg}");
    }

    #[test]
    fn file_text_round_trips() {
        let ring = KeyRing::generate().with_new_current_key().with_new_current_key();
        let text = ring.to_file_text();
        let back = KeyRing::parse(&text).unwrap();
        assert_eq!(back.to_file_text(), text);
        assert_eq!(back.current_key_id(), 3);
        assert_eq!(back.key_ids().collect::<Vec<_>>(), vec![3, 2, 1]);
        assert_eq!(back.naming_salt(), ring.naming_salt());
    }

    #[test]
    fn generate_is_random() {
        let a = KeyRing::generate();
        let b = KeyRing::generate();
        assert_eq!(a.current_key_id(), 1);
        assert_ne!(a.to_file_text(), b.to_file_text());
        assert_ne!(a.naming_salt(), b.naming_salt());
        assert_eq!(a.naming_salt().len(), GENERATED_SALT_LEN);
    }

    #[test]
    fn rotation_keeps_old_keys_and_salt() {
        let ring = KeyRing::parse(&format!("key 5 {KEY_A}\nkey 9 {KEY_B_URLSAFE_NOPAD}\n")).unwrap();
        let rotated = ring.with_new_current_key();
        assert_eq!(rotated.current_key_id(), 10);
        assert_eq!(rotated.key_ids().collect::<Vec<_>>(), vec![10, 5, 9]);
        assert_eq!(rotated.naming_salt(), ring.naming_salt());
        // The original is unchanged.
        assert_eq!(ring.current_key_id(), 5);
        let max = KeyRing::parse(&format!("key 4294967295 {KEY_A}\nkey 0 {KEY_A}\n")).unwrap();
        assert_eq!(max.with_new_current_key().current_key_id(), 1);
    }

    #[cfg(unix)]
    fn write_with_mode(path: &Path, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_group_or_world_access() {
        let dir = TempDir::new("load-mode");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("keys");
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            write_with_mode(&path, &format!("key 1 {KEY_A}\n"), mode);
            let err = KeyRing::load(&path).unwrap_err();
            assert!(matches!(err, KeyRingError::Permissions { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("chmod 600"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        for mode in [0o600, 0o400] {
            write_with_mode(&path, &format!("key 1 {KEY_A}\n"), mode);
            assert_eq!(KeyRing::load(&path).unwrap().current_key_id(), 1);
        }
    }

    #[cfg(unix)]
    #[test]
    fn load_errors_name_the_file_and_line() {
        let dir = TempDir::new("load-err");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("keys");
        write_with_mode(&path, &format!("key 1 {KEY_A}\nbogus\n"), 0o600);
        let msg = KeyRing::load(&path).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{}:2: unknown directive", path.display())), "{msg}");
        std::fs::write(&path, [0xffu8, 0xfe]).unwrap();
        let err = KeyRing::load(&path).unwrap_err();
        assert!(matches!(err, KeyRingError::NotUtf8 { .. }), "{err:?}");
        let missing = dir.0.join("missing");
        let msg = KeyRing::load(&missing).unwrap_err().to_string();
        assert!(msg.contains("missing") && msg.contains("cannot open key file"), "{msg}");
    }

    #[test]
    fn load_or_create_creates_then_reuses() {
        let dir = TempDir::new("create");
        let state = dir.0.join("nested").join("state");
        let first = KeyRing::load_or_create(&state).unwrap();
        let path = state.join(KEY_FILE_NAME);
        assert!(path.is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let dmode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
            assert_eq!(dmode, 0o700);
        }
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE_NAME)]);
        // A restart loads the same ring.
        let second = KeyRing::load_or_create(&state).unwrap();
        assert_eq!(first.to_file_text(), second.to_file_text());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first.to_file_text());
    }

    #[test]
    fn load_or_create_uses_existing_file() {
        let dir = TempDir::new("existing");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(KEY_FILE_NAME);
        std::fs::write(&path, format!("key 42 {KEY_A}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(KeyRing::load_or_create(&dir.0), Err(KeyRingError::Permissions { .. })));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(KeyRing::load_or_create(&dir.0).unwrap().current_key_id(), 42);
    }

    #[test]
    fn publish_never_clobbers() {
        let dir = TempDir::new("clobber");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(KEY_FILE_NAME);
        std::fs::write(&path, "existing").unwrap();
        let r = publish_new_file(&dir.0, &path, b"new").unwrap();
        assert!(matches!(r, Published::AlreadyExisted));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "existing");
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn load_or_create_reports_unusable_state_dir() {
        let dir = TempDir::new("notdir");
        std::fs::create_dir_all(&dir.0).unwrap();
        let file = dir.0.join("plain-file");
        std::fs::write(&file, "x").unwrap();
        let err = KeyRing::load_or_create(&file.join("state")).unwrap_err();
        assert!(matches!(err, KeyRingError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("plain-file"), "{err}");
    }
}
