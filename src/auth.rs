//! Token access (`[auth] mode = "token"`): the `connection` message must carry a JWT
//! in `custom.token` whose claims name the login, the rooms and the right to publish.
//!
//! Claims: `sub` (the login; must equal `custom.login`), `rooms` (a list of room names
//! or `"*"`), `publish` (default true) and `exp` (required). HS256 with `[auth] secret`,
//! or EdDSA / RS256 with the PEM public key at `[auth] public_key`. Verification is the
//! `jsonwebtoken` crate's (constant-time MAC comparison); the token itself is never logged.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{Auth, AuthMode};

/// What a session may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Access {
    /// `[auth] mode = "open"`: anything.
    #[default]
    Open,
    /// A valid token.
    Granted {
        rooms: Rooms,
        publish: bool,
        /// May kick and mute others (`moderator` claim).
        moderator: bool,
    },
    /// No usable token: every join fails with this reason.
    Refused(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rooms {
    /// `"*"`: every room.
    Any(String),
    List(Vec<String>),
}

impl Rooms {
    pub fn allows(&self, room: &str) -> bool {
        match self {
            Rooms::Any(s) => s == "*",
            Rooms::List(list) => list.iter().any(|r| r == room),
        }
    }
}

/// What a reader of the records may see (`Authority::reader`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reader {
    /// Open mode or an admin token.
    All,
    /// The records of these rooms.
    Rooms(Rooms),
}

impl Reader {
    pub fn allows(&self, room: &str) -> bool {
        match self {
            Reader::All => true,
            Reader::Rooms(rooms) => rooms.allows(room),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub rooms: Rooms,
    #[serde(default = "yes")]
    pub publish: bool,
    pub exp: u64,
    /// May read the device's details (`/health` occupancy and version; the admin API).
    #[serde(default)]
    pub admin: bool,
    /// May kick and mute others in the rooms it may join (Room API moderation).
    #[serde(default)]
    pub moderator: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}: {why}")]
    Key { path: String, why: String },
    #[error("[auth] mode = \"token\" needs `secret` or `public_key`")]
    NoKey,
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// Checks tokens against the configured key.
pub struct Authority {
    mode: AuthMode,
    keys: Vec<(DecodingKey, Algorithm)>,
}

impl Authority {
    pub fn new(auth: &Auth) -> Result<Authority, AuthError> {
        let mut keys = Vec::new();
        if !auth.secret.is_empty() {
            keys.push((
                DecodingKey::from_secret(auth.secret.as_bytes()),
                Algorithm::HS256,
            ));
        }
        if !auth.public_key.as_os_str().is_empty() {
            keys.push(public_key(&auth.public_key)?);
        }
        if auth.mode == AuthMode::Token && keys.is_empty() {
            return Err(AuthError::NoKey);
        }
        Ok(Authority {
            mode: auth.mode,
            keys,
        })
    }

    /// The access of a session that connected with this login and token.
    pub fn check(&self, login: Option<&str>, token: Option<&str>) -> Access {
        if self.mode == AuthMode::Open {
            return Access::Open;
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Access::Refused("Restricted access: a token is required (custom.token)".into());
        };
        let claims = match self.verify(token) {
            Ok(c) => c,
            Err(why) => return Access::Refused(format!("Restricted access: {why}")),
        };
        if Some(claims.sub.as_str()) != login {
            return Access::Refused(
                "Restricted access: the token was issued for another login".into(),
            );
        }
        Access::Granted {
            rooms: claims.rooms,
            publish: claims.publish,
            moderator: claims.moderator,
        }
    }

    /// The login a valid token was issued for (`sub`): who an RTMP player is, since
    /// its URL names only the room and the stream.
    pub fn subject(&self, token: &str) -> Option<String> {
        if self.mode == AuthMode::Open || token.is_empty() {
            return None;
        }
        self.verify(token).ok().map(|c| c.sub)
    }

    /// Whether a request carrying this bearer token may see the device's details:
    /// always in open mode; in token mode only with a valid token with `admin: true`.
    pub fn admin(&self, bearer: Option<&str>) -> bool {
        if self.mode == AuthMode::Open {
            return true;
        }
        bearer
            .filter(|t| !t.is_empty())
            .and_then(|t| self.verify(t).ok())
            .is_some_and(|c| c.admin)
    }

    /// Which records a request carrying this token may list and download: everything in
    /// open mode and with an admin token, the records of its rooms with another valid
    /// token; otherwise why not (never containing the token).
    pub fn reader(&self, token: Option<&str>) -> Result<Reader, String> {
        if self.mode == AuthMode::Open {
            return Ok(Reader::All);
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err("a token is required".into());
        };
        let claims = self.verify(token)?;
        Ok(match claims.admin {
            true => Reader::All,
            false => Reader::Rooms(claims.rooms),
        })
    }

    /// The claims of a valid token, or why it is not valid. Only the keys of the
    /// token's own algorithm are tried, so with both a secret and a public key the
    /// reason is the one of the key that applies (an expired HS256 token is "expired",
    /// not "signed with an algorithm this device does not accept").
    fn verify(&self, token: &str) -> Result<Claims, String> {
        use jsonwebtoken::errors::ErrorKind;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "the token is malformed".to_owned())?;
        let mut last =
            "the token is signed with an algorithm this device does not accept".to_owned();
        for (key, algorithm) in self.keys.iter().filter(|(_, a)| *a == header.alg) {
            let mut validation = Validation::new(*algorithm);
            validation.leeway = 30;
            validation.set_required_spec_claims(&["exp", "sub"]);
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => "the token has expired".into(),
                        ErrorKind::InvalidSignature => "the token's signature is not valid".into(),
                        ErrorKind::InvalidAlgorithm => {
                            "the token is signed with an algorithm this device does not accept"
                                .into()
                        }
                        ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => {
                            "the token lacks the claims sub, rooms and exp".into()
                        }
                        _ => "the token is malformed".into(),
                    };
                }
            }
        }
        Err(last)
    }
}

fn public_key(path: &Path) -> Result<(DecodingKey, Algorithm), AuthError> {
    let err = |why: String| AuthError::Key {
        path: path.display().to_string(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    DecodingKey::from_rsa_pem(&pem)
        .map(|key| (key, Algorithm::RS256))
        .map_err(|_| err("not a PEM Ed25519 or RSA public key".into()))
}

/// Mints a token (HS256 with `secret`, or EdDSA/RS256 with a PEM private key file).
pub fn mint(
    claims: &Claims,
    secret: &str,
    private_key: Option<&Path>,
) -> Result<String, AuthError> {
    let (header, key) = match private_key {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| AuthError::Key {
                path: path.display().to_string(),
                why: e.to_string(),
            })?;
            match EncodingKey::from_ed_pem(&pem) {
                Ok(k) => (Header::new(Algorithm::EdDSA), k),
                Err(_) => (
                    Header::new(Algorithm::RS256),
                    EncodingKey::from_rsa_pem(&pem).map_err(|e| AuthError::Key {
                        path: path.display().to_string(),
                        why: format!("not a PEM Ed25519 or RSA private key: {e}"),
                    })?,
                ),
            }
        }
        None if !secret.is_empty() => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(secret.as_bytes()),
        ),
        None => return Err(AuthError::NoKey),
    };
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| AuthError::Sign(e.to_string()))
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> Authority {
        Authority::new(&Auth {
            mode: AuthMode::Token,
            secret: "s3cret".into(),
            public_key: Default::default(),
        })
        .unwrap()
    }

    fn token(sub: &str, rooms: Rooms, publish: bool, exp: u64, secret: &str) -> String {
        mint(
            &Claims {
                sub: sub.into(),
                rooms,
                publish,
                exp,
                admin: false,
                moderator: false,
            },
            secret,
            None,
        )
        .unwrap()
    }

    #[test]
    fn only_admin_tokens_see_details() {
        let a = authority();
        let exp = now_unix() + 60;
        let plain = token("alice", Rooms::Any("*".into()), true, exp, "s3cret");
        let ops = |secret: &str| {
            let claims = Claims {
                sub: "ops".into(),
                rooms: Rooms::List(vec![]),
                publish: false,
                exp,
                admin: true,
                moderator: false,
            };
            mint(&claims, secret, None).unwrap()
        };
        let admin = ops("s3cret");
        assert!(a.admin(Some(&admin)));
        assert!(!a.admin(Some(&plain)));
        assert!(!a.admin(None));
        assert!(!a.admin(Some("")));
        assert!(!a.admin(Some("junk.junk.junk")));
        let forged = ops("other secret");
        assert!(!a.admin(Some(&forged)));
        let open = Authority::new(&Auth::default()).unwrap();
        assert!(open.admin(None));
    }

    #[test]
    fn a_valid_token_grants_its_rooms() {
        let t = token(
            "alice",
            Rooms::List(vec!["daily".into()]),
            false,
            now_unix() + 60,
            "s3cret",
        );
        match authority().check(Some("alice"), Some(&t)) {
            Access::Granted { rooms, publish, .. } => {
                assert!(rooms.allows("daily") && !rooms.allows("other"));
                assert!(!publish);
            }
            other => panic!("{other:?}"),
        }
        let any = token(
            "bob",
            Rooms::Any("*".into()),
            true,
            now_unix() + 60,
            "s3cret",
        );
        assert!(matches!(
            authority().check(Some("bob"), Some(&any)),
            Access::Granted {
                rooms: Rooms::Any(_),
                publish: true,
                ..
            }
        ));
    }

    #[test]
    fn every_bad_token_is_refused_with_its_reason() {
        let a = authority();
        let refused = |login: &str, t: &str| match a.check(Some(login), Some(t)) {
            Access::Refused(why) => why,
            other => panic!("{other:?}"),
        };
        let expired = token(
            "alice",
            Rooms::Any("*".into()),
            true,
            now_unix() - 3600,
            "s3cret",
        );
        assert!(refused("alice", &expired).contains("expired"));
        let forged = token(
            "alice",
            Rooms::Any("*".into()),
            true,
            now_unix() + 60,
            "other",
        );
        assert!(refused("alice", &forged).contains("signature"));
        let good = token(
            "alice",
            Rooms::Any("*".into()),
            true,
            now_unix() + 60,
            "s3cret",
        );
        assert!(refused("mallory", &good).contains("another login"));
        for garbage in [
            "",
            "x",
            "a.b.c",
            "....",
            "eyJ.eyJ.sig",
            &"A".repeat(100_000),
            "é.ü.ß",
        ] {
            let why = match a.check(Some("alice"), Some(garbage)) {
                Access::Refused(why) => why,
                other => panic!("{garbage}: {other:?}"),
            };
            assert!(why.starts_with("Restricted access"), "{why}");
        }
        assert!(matches!(a.check(Some("alice"), None), Access::Refused(_)));
    }

    /// A throwaway Ed25519 pair for tests only.
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAsH1qIK/Ij06fPw0ISVgm4jMwAU4FS2EbMsBk0IIH44g=\n-----END PUBLIC KEY-----\n";
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIFXFcPP53bTAOsl4PUC8C4nZUOG9+auY8qm0iKTsVxT+\n-----END PRIVATE KEY-----\n";

    #[test]
    fn with_a_secret_and_a_public_key_the_reason_is_the_applicable_keys() {
        let dir = std::env::temp_dir().join(format!("huddle-auth-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (public, private) = (dir.join("ed.pub.pem"), dir.join("ed.pem"));
        std::fs::write(&public, ED_PUBLIC).unwrap();
        std::fs::write(&private, ED_PRIVATE).unwrap();
        let a = Authority::new(&Auth {
            mode: AuthMode::Token,
            secret: "s3cret".into(),
            public_key: public.clone(),
        })
        .unwrap();
        let claims = |exp: u64| Claims {
            sub: "alice".into(),
            rooms: Rooms::Any("*".into()),
            publish: true,
            exp,
            admin: false,
            moderator: false,
        };
        let why = |t: &str| match a.check(Some("alice"), Some(t)) {
            Access::Refused(why) => why,
            other => panic!("{other:?}"),
        };
        // Expired HS256: the public key does not apply, so no "algorithm" reason.
        let hs_expired = mint(&claims(now_unix() - 3600), "s3cret", None).unwrap();
        assert_eq!(why(&hs_expired), "Restricted access: the token has expired");
        let hs_forged = mint(&claims(now_unix() + 60), "other", None).unwrap();
        assert!(why(&hs_forged).contains("signature"), "{}", why(&hs_forged));
        let ed_expired = mint(&claims(now_unix() - 3600), "", Some(&private)).unwrap();
        assert_eq!(why(&ed_expired), "Restricted access: the token has expired");
        let ed_good = mint(&claims(now_unix() + 60), "", Some(&private)).unwrap();
        assert!(matches!(
            a.check(Some("alice"), Some(&ed_good)),
            Access::Granted { .. }
        ));
        let hs_good = mint(&claims(now_unix() + 60), "s3cret", None).unwrap();
        assert!(matches!(
            a.check(Some("alice"), Some(&hs_good)),
            Access::Granted { .. }
        ));
        // An Ed25519 token where only a secret is configured: the algorithm.
        let secret_only = authority();
        match secret_only.check(Some("alice"), Some(&ed_good)) {
            Access::Refused(why) => assert!(why.contains("algorithm"), "{why}"),
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn record_readers_see_their_rooms_or_all() {
        let a = authority();
        let exp = now_unix() + 60;
        let room = token(
            "alice",
            Rooms::List(vec!["daily".into()]),
            false,
            exp,
            "s3cret",
        );
        let reader = a.reader(Some(&room)).unwrap();
        assert!(reader.allows("daily") && !reader.allows("other"));
        let admin = mint(
            &Claims {
                sub: "ops".into(),
                rooms: Rooms::List(vec![]),
                publish: false,
                exp,
                admin: true,
                moderator: false,
            },
            "s3cret",
            None,
        )
        .unwrap();
        assert_eq!(a.reader(Some(&admin)), Ok(Reader::All));
        assert!(a.reader(None).is_err());
        assert!(a.reader(Some("")).is_err());
        let expired = token("alice", Rooms::Any("*".into()), true, exp - 7200, "s3cret");
        assert!(a.reader(Some(&expired)).unwrap_err().contains("expired"));
        let open = Authority::new(&Auth::default()).unwrap();
        assert_eq!(open.reader(None), Ok(Reader::All));
    }

    #[test]
    fn open_mode_needs_no_token() {
        let open = Authority::new(&Auth::default()).unwrap();
        assert_eq!(open.check(Some("x"), None), Access::Open);
    }

    #[test]
    fn token_mode_needs_a_key() {
        let e = Authority::new(&Auth {
            mode: AuthMode::Token,
            ..Auth::default()
        });
        assert!(e.is_err());
    }
}
