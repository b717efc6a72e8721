//! API tokens in the operating system's keychain: the Secret Service on Linux (gnome-keyring,
//! KWallet; spoken to over D-Bus in pure Rust, no libdbus), the login Keychain on macOS, the
//! Credential Manager on Windows, all through `keyring-core` and its per-platform stores.
//!
//! Every call is blocking (a D-Bus round trip on Linux): the app calls these from a blocking
//! task, never before its window is up. A store is opened per call rather than once per
//! process, so a keychain that comes up after the app (a login keyring unlocked later) is used
//! from the next call on.

/// The keychain's service name; the account is `profile:<name>`.
pub const SERVICE: &str = "big-red-button";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeychainError {
    /// No keychain answers (no Secret Service on the session bus, no session bus at all), or
    /// it is locked and was not unlocked.
    #[error("no OS keychain is available: {0}")]
    Unavailable(String),
    /// The keychain answered but refused or failed the operation.
    #[error("the OS keychain failed: {0}")]
    Failed(String),
}

/// Where tokens are kept; the app uses [`OsKeychain`].
pub trait Secrets: Send + Sync {
    /// The token of a profile, `None` when the keychain holds none.
    fn get(&self, profile: &str) -> Result<Option<String>, KeychainError>;
    fn set(&self, profile: &str, token: &str) -> Result<(), KeychainError>;
    /// Deleting what is not there is not an error.
    fn delete(&self, profile: &str) -> Result<(), KeychainError>;
}

/// The platform's keychain.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsKeychain;

fn account(profile: &str) -> String {
    format!("profile:{profile}")
}

fn classify(e: keyring_core::Error) -> KeychainError {
    use keyring_core::Error as E;
    match e {
        E::NoStorageAccess(p) => KeychainError::Unavailable(p.to_string()),
        E::NoDefaultStore => KeychainError::Unavailable("no credential store".into()),
        other => KeychainError::Failed(other.to_string()),
    }
}

#[cfg(all(
    unix,
    not(any(target_os = "macos", target_os = "ios", target_os = "android"))
))]
fn store() -> Result<std::sync::Arc<keyring_core::CredentialStore>, KeychainError> {
    // Connecting fails when there is no session bus or no Secret Service on it: both mean
    // "no keychain here", not a failed write.
    zbus_secret_service_keyring_store::Store::new()
        .map(|s| s as std::sync::Arc<keyring_core::CredentialStore>)
        .map_err(|e| KeychainError::Unavailable(e.to_string()))
}

#[cfg(target_os = "macos")]
fn store() -> Result<std::sync::Arc<keyring_core::CredentialStore>, KeychainError> {
    apple_native_keyring_store::keychain::Store::new()
        .map(|s| s as std::sync::Arc<keyring_core::CredentialStore>)
        .map_err(|e| KeychainError::Unavailable(e.to_string()))
}

#[cfg(target_os = "windows")]
fn store() -> Result<std::sync::Arc<keyring_core::CredentialStore>, KeychainError> {
    windows_native_keyring_store::Store::new()
        .map(|s| s as std::sync::Arc<keyring_core::CredentialStore>)
        .map_err(|e| KeychainError::Unavailable(e.to_string()))
}

#[cfg(not(any(unix, target_os = "windows")))]
fn store() -> Result<std::sync::Arc<keyring_core::CredentialStore>, KeychainError> {
    Err(KeychainError::Unavailable(
        "no keychain support on this platform".into(),
    ))
}

fn entry(profile: &str) -> Result<keyring_core::Entry, KeychainError> {
    keyring_core::Entry::new_in_store(&store()?, SERVICE, &account(profile)).map_err(classify)
}

impl Secrets for OsKeychain {
    fn get(&self, profile: &str) -> Result<Option<String>, KeychainError> {
        match entry(profile)?.get_password() {
            Ok(t) => Ok(Some(t)),
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(e) => Err(classify(e)),
        }
    }

    fn set(&self, profile: &str, token: &str) -> Result<(), KeychainError> {
        entry(profile)?.set_password(token).map_err(classify)
    }

    fn delete(&self, profile: &str) -> Result<(), KeychainError> {
        match entry(profile)?.delete_credential() {
            Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }
}
