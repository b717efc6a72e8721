//! Named profiles (staging, production…) as the connect screen and the tray change them, and
//! where their tokens go.
//!
//! Tokens go to the OS keychain ([`crate::keychain`]). When no keychain answers (a server
//! without a desktop session, a locked keyring nobody unlocks), the token stays in the settings
//! file — mode 0600, as before keychain support — and the app says so on the connect screen
//! and in the profile switcher; it is moved to the keychain at the next start where one
//! answers. A token is never dropped: it leaves the file only after the keychain has it and
//! gives it back, and the file is replaced atomically.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{DesktopError, KeychainError, Profile, Secrets, Settings};

/// A profile as typed on the connect screen.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ProfileDraft {
    pub name: String,
    pub urls: Vec<String>,
    /// Empty when editing a profile keeps its token.
    pub token: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub color: Option<String>,
    pub insecure_http: bool,
}

impl std::fmt::Debug for ProfileDraft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileDraft")
            .field("name", &self.name)
            .field("urls", &self.urls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where a profile's token is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenPlace {
    Keychain,
    /// In the settings file (0600), because the keychain was not available.
    File {
        reason: String,
    },
    /// From `BRB_TOKEN`/`BRB_TOKEN_FILE` for this run.
    Environment,
    /// The keychain could not be asked (the app does not know without asking).
    Unknown,
}

/// A profile as the webview sees it: everything but the token.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileView {
    pub name: String,
    pub urls: Vec<String>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub color: Option<String>,
    pub insecure_http: bool,
    pub token: TokenPlace,
    pub active: bool,
}

pub fn view(settings: &Settings, keychain_problem: Option<&str>) -> Vec<ProfileView> {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    settings
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| ProfileView {
            name: p.name.clone(),
            urls: p.urls.clone(),
            ca_file: path(&p.ca_file),
            client_cert: path(&p.client_cert),
            client_key: path(&p.client_key),
            color: p.color.clone(),
            insecure_http: p.insecure_http,
            token: if p.from_env {
                TokenPlace::Environment
            } else if p.token.is_some() {
                TokenPlace::File {
                    reason: keychain_problem
                        .unwrap_or("it is moved to the OS keychain at the next start")
                        .to_string(),
                }
            } else {
                TokenPlace::Keychain
            },
            active: i == settings.active,
        })
        .collect()
}

fn invalid(m: impl Into<String>) -> DesktopError {
    DesktopError::InvalidProfile(m.into())
}

fn optional(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Checks a draft without touching the network; `replacing` is the name of the profile being
/// edited. Every message names the field.
pub fn validate(
    draft: &ProfileDraft,
    settings: &Settings,
    replacing: Option<&str>,
) -> Result<Profile, DesktopError> {
    let name = draft.name.trim();
    if name.is_empty() {
        return Err(invalid(
            "Name: give the profile a name (e.g. staging, production)",
        ));
    }
    if name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(invalid(
            "Name: at most 64 characters, no control characters",
        ));
    }
    if replacing != Some(name)
        && settings
            .profiles
            .iter()
            .any(|p| p.name == name && !p.from_env)
    {
        return Err(invalid(format!(
            "Name: a profile named \"{name}\" exists already"
        )));
    }
    let urls: Vec<String> = draft
        .urls
        .iter()
        .flat_map(|u| u.split([',', '\n']))
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(invalid("URLs: give at least one control-plane URL"));
    }
    for u in &urls {
        match url::Url::parse(u) {
            Ok(p) if matches!(p.scheme(), "http" | "https") && p.host_str().is_some() => {}
            _ => {
                return Err(invalid(format!(
                    "URLs: \"{u}\" is not an http:// or https:// address with a host"
                )));
            }
        }
    }
    let file =
        |label: &str, v: &Option<String>| -> Result<Option<std::path::PathBuf>, DesktopError> {
            match optional(v) {
                None => Ok(None),
                Some(p) => match std::fs::metadata(&p) {
                    Ok(m) if m.is_file() => Ok(Some(p.into())),
                    Ok(_) => Err(invalid(format!("{label}: {p} is not a file"))),
                    Err(e) => Err(invalid(format!("{label}: cannot read {p}: {e}"))),
                },
            }
        };
    let ca_file = file("CA file", &draft.ca_file)?;
    let client_cert = file("Client certificate", &draft.client_cert)?;
    let client_key = file("Client key", &draft.client_key)?;
    if client_cert.is_some() != client_key.is_some() {
        return Err(invalid(
            "Client certificate: give both the certificate and its key, or neither",
        ));
    }
    let color = optional(&draft.color);
    if let Some(c) = &color
        && !(c.len() == 7 && c.starts_with('#') && c[1..].chars().all(|h| h.is_ascii_hexdigit()))
    {
        return Err(invalid(format!("Colour: \"{c}\" is not a #rrggbb colour")));
    }
    let profile = Profile {
        name: name.to_string(),
        urls,
        token: None,
        ca_file,
        client_cert,
        client_key,
        insecure_http: draft.insecure_http,
        color,
        from_env: false,
    };
    // The client's own checks: plain http only to loopback unless allowed, readable PEM.
    brb_client::Client::with_tls(&profile.urls, None, &profile.tls())
        .map_err(|e| invalid(format!("URLs: {e}")))?;
    let keeps_token = replacing.is_some_and(|r| settings.profiles.iter().any(|p| p.name == r));
    if optional(&draft.token).is_none() && !keeps_token {
        return Err(invalid(
            "Token: paste an API token (brb token create NAME --role operator)",
        ));
    }
    Ok(profile)
}

/// What saving did.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub settings: Settings,
    pub token: TokenPlace,
}

/// Stores the token (keychain, else the file), writes the settings atomically and makes the
/// profile the active one. On any error nothing that was there before is lost: the old file
/// stays until the new one is complete, and an old token is only replaced by a new one.
pub fn save_profile(
    settings: &Settings,
    path: &Path,
    secrets: &dyn Secrets,
    draft: &ProfileDraft,
    replacing: Option<&str>,
) -> Result<Saved, DesktopError> {
    let mut profile = validate(draft, settings, replacing)?;
    let old = replacing.and_then(|r| {
        settings
            .profiles
            .iter()
            .find(|p| p.name == r && !p.from_env)
    });
    let token = match optional(&draft.token) {
        Some(t) => Some(t),
        None => match old {
            Some(o) if o.token.is_some() => o.token.clone(),
            Some(o) if o.name != profile.name => secrets.get(&o.name).ok().flatten(),
            // Same name, token in the keychain: it stays where it is.
            _ => None,
        },
    };
    let place = match &token {
        None => TokenPlace::Keychain,
        Some(t) => match store_verified(secrets, &profile.name, t) {
            Ok(()) => TokenPlace::Keychain,
            Err(e) => {
                profile.token = Some(t.clone());
                TokenPlace::File {
                    reason: e.to_string(),
                }
            }
        },
    };
    let mut next = settings.clone();
    next.profiles.retain(|p| !p.from_env);
    match replacing.and_then(|r| next.profiles.iter().position(|p| p.name == r)) {
        Some(i) => next.profiles[i] = profile.clone(),
        None => next.profiles.push(profile.clone()),
    }
    next.active = next
        .profiles
        .iter()
        .position(|p| p.name == profile.name)
        .unwrap_or(0);
    next.save(path)?;
    if let Some(o) = old
        && o.name != profile.name
        && place == TokenPlace::Keychain
        && o.token.is_none()
    {
        // Renamed: the old entry is a leftover only now that the file names the new one.
        let _ = secrets.delete(&o.name);
    }
    Ok(Saved {
        settings: next,
        token: place,
    })
}

/// Writes and reads back: a keychain that accepts but does not keep (a locked collection
/// that silently drops) must not cost the token.
fn store_verified(secrets: &dyn Secrets, name: &str, token: &str) -> Result<(), KeychainError> {
    secrets.set(name, token)?;
    match secrets.get(name)? {
        Some(t) if t == token => Ok(()),
        _ => Err(KeychainError::Failed(
            "the keychain did not give the token back after storing it".into(),
        )),
    }
}

/// What the start-up migration did.
#[derive(Debug, Clone, PartialEq)]
pub enum Migration {
    /// No token in the file.
    Nothing,
    /// These profiles' tokens were moved to the keychain and removed from the file.
    Moved(Vec<String>),
    /// The keychain is not usable: the file was left as it was.
    KeptInFile { reason: String },
}

/// Moves tokens found in the settings file to the keychain. The file is rewritten (atomically)
/// only after every token is in the keychain and read back; if the keychain fails, the file is
/// not touched; if the rewrite fails, the tokens are in both places and the next start tries
/// again.
pub fn migrate_tokens(
    settings: &Settings,
    path: &Path,
    secrets: &dyn Secrets,
) -> Result<(Settings, Migration), DesktopError> {
    let with_token: Vec<&Profile> = settings
        .profiles
        .iter()
        .filter(|p| p.token.is_some() && !p.from_env)
        .collect();
    if with_token.is_empty() {
        return Ok((settings.clone(), Migration::Nothing));
    }
    for p in &with_token {
        if let Some(t) = &p.token
            && let Err(e) = store_verified(secrets, &p.name, t)
        {
            return Ok((
                settings.clone(),
                Migration::KeptInFile {
                    reason: e.to_string(),
                },
            ));
        }
    }
    let moved = with_token.iter().map(|p| p.name.clone()).collect();
    let mut next = settings.clone();
    for p in next.profiles.iter_mut().filter(|p| !p.from_env) {
        p.token = None;
    }
    next.save(path)?;
    Ok((next, Migration::Moved(moved)))
}

/// Makes `name` the active profile and writes the file.
pub fn use_profile(settings: &Settings, path: &Path, name: &str) -> Result<Settings, DesktopError> {
    let i = settings
        .profiles
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| invalid(format!("no profile named \"{name}\"")))?;
    let mut next = settings.clone();
    next.active = i;
    next.save(path)?;
    Ok(next)
}

/// What deleting a profile did.
#[derive(Debug, Clone, PartialEq)]
pub struct Deleted {
    pub settings: Settings,
    /// The deleted profile was the active one: the app connects to what is active now (the
    /// first profile left, or the connect screen when none is).
    pub was_active: bool,
    /// Why its token is still in the keychain, when the keychain refused to remove it (the
    /// profile is gone all the same; the entry is an unused leftover the person is told about).
    pub keychain_left: Option<String>,
}

/// Deletes a profile: first from the settings file (atomically; on failure nothing changed),
/// then its token from the keychain, so a token is never removed while a profile names it.
/// A profile made from `BRB_URL` for this run is not in the file and cannot be deleted here.
pub fn delete_profile(
    settings: &Settings,
    path: &Path,
    secrets: &dyn Secrets,
    name: &str,
) -> Result<Deleted, DesktopError> {
    let i = settings
        .profiles
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| invalid(format!("no profile named \"{name}\"")))?;
    if settings.profiles[i].from_env {
        return Err(invalid(format!(
            "\"{name}\" comes from BRB_URL for this run only; unset BRB_URL to drop it"
        )));
    }
    let mut next = settings.clone();
    let removed = next.profiles.remove(i);
    let was_active = settings.active == i;
    next.active = if settings.active > i {
        settings.active - 1
    } else if was_active {
        0
    } else {
        settings.active
    };
    next.save(path)?;
    let keychain_left = match secrets.delete(&removed.name) {
        Ok(()) => None,
        // Its token was in the file (no keychain when it was saved): nothing was left there.
        Err(_) if removed.token.is_some() => None,
        Err(e) => Some(e.to_string()),
    };
    Ok(Deleted {
        settings: next,
        was_active,
        keychain_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keychain in memory that can be told to fail: what the order of writes is checked on
    /// (the real Secret Service is exercised by ui/tests/desktop-connect.e2e.mjs).
    #[derive(Default)]
    struct Memory {
        tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
        refuse_delete: bool,
    }

    impl Secrets for Memory {
        fn get(&self, profile: &str) -> Result<Option<String>, KeychainError> {
            Ok(self.tokens.lock().unwrap().get(profile).cloned())
        }
        fn set(&self, profile: &str, token: &str) -> Result<(), KeychainError> {
            self.tokens
                .lock()
                .unwrap()
                .insert(profile.into(), token.into());
            Ok(())
        }
        fn delete(&self, profile: &str) -> Result<(), KeychainError> {
            if self.refuse_delete {
                return Err(KeychainError::Failed("locked".into()));
            }
            self.tokens.lock().unwrap().remove(profile);
            Ok(())
        }
    }

    fn profile(name: &str) -> Profile {
        Profile {
            name: name.into(),
            urls: vec!["http://127.0.0.1:7070".into()],
            token: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            insecure_http: false,
            color: None,
            from_env: false,
        }
    }

    #[test]
    fn deleting_a_profile_removes_it_from_the_file_and_its_token_from_the_keychain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desktop.json");
        let keychain = Memory::default();
        let mut s = Settings::default();
        for n in ["staging", "production", "dr"] {
            s.profiles.push(profile(n));
            keychain.set(n, &format!("brb_{n}_secret")).unwrap();
        }
        s.active = 2;
        s.save(&path).unwrap();
        // Not the active one: the active profile stays active.
        let d = delete_profile(&s, &path, &keychain, "staging").unwrap();
        assert!(!d.was_active);
        assert_eq!(d.keychain_left, None);
        assert_eq!(d.settings.active_profile().unwrap().name, "dr");
        assert_eq!(Settings::load(&path).unwrap(), d.settings);
        assert_eq!(keychain.get("staging").unwrap(), None);
        assert_eq!(
            keychain.get("dr").unwrap().as_deref(),
            Some("brb_dr_secret")
        );
        // The active one: the first left becomes active.
        let d = delete_profile(&d.settings, &path, &keychain, "dr").unwrap();
        assert!(d.was_active);
        assert_eq!(d.settings.active_profile().unwrap().name, "production");
        // A keychain that refuses: the profile is gone, and the leftover is reported.
        let refusing = Memory {
            refuse_delete: true,
            ..Memory::default()
        };
        refusing.set("production", "brb_production_secret").unwrap();
        let d = delete_profile(&d.settings, &path, &refusing, "production").unwrap();
        assert!(d.settings.profiles.is_empty());
        assert!(d.keychain_left.unwrap().contains("locked"));
        assert!(Settings::load(&path).unwrap().profiles.is_empty());
        // Unknown names and this run's BRB_URL profile are refused, and nothing is written.
        assert!(delete_profile(&d.settings, &path, &keychain, "nope").is_err());
        let env =
            Settings::default().with_env(|k| (k == "BRB_URL").then(|| "http://127.0.0.1:1".into()));
        let e = delete_profile(&env, &path, &keychain, "default").unwrap_err();
        assert!(e.to_string().contains("BRB_URL"), "{e}");
    }

    #[test]
    fn a_failed_file_write_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: the write fails.
        let path = dir.path().join("desktop.json");
        std::fs::create_dir(&path).unwrap();
        let keychain = Memory::default();
        let mut s = Settings::default();
        s.profiles.push(profile("staging"));
        keychain.set("staging", "brb_staging_secret").unwrap();
        assert!(delete_profile(&s, &path, &keychain, "staging").is_err());
        assert_eq!(
            keychain.get("staging").unwrap().as_deref(),
            Some("brb_staging_secret"),
            "the token stays while the file may still name the profile"
        );
    }
}
