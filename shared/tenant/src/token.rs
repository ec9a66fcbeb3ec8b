//! Bearer tokens: JWT claims, verification (with a short cache) and signing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mosaic_api::{ApiError, ApiResult};
use mosaic_core::{ConfigError, Env, TenantId};
use serde::{Deserialize, Serialize};

use crate::context::{PLATFORM_ADMIN, Role, SERVICE_ROLE_PREFIX};

/// The claims of a Mosaic token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// Principal: `user:<id>`, `key:<id>` or `platform:<name>`.
    pub sub: String,
    /// Issued at (seconds since the epoch): revocations end tokens issued before them.
    pub iat: u64,
    /// Not before; the exchanged tokens set it to `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    pub exp: u64,
    /// Tenant id; absent only in platform-admin tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<TenantId>,
    /// `owner`, `admin`, `member`, `viewer`, and/or `platform_admin`.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Claims {
    /// Claims for `sub` acting in `tenant` with `roles`, valid for `ttl` from now.
    pub fn new(
        config: &AuthConfig,
        sub: String,
        tenant: Option<TenantId>,
        roles: Vec<String>,
        ttl: Duration,
    ) -> Self {
        let now = unix_now();
        Self {
            iss: config.issuer.clone(),
            aud: config.audience.clone(),
            sub,
            iat: now,
            nbf: Some(now),
            exp: now + ttl.as_secs(),
            tid: tenant,
            roles,
        }
    }

    /// The strongest tenant role among the claims.
    pub fn role(&self) -> Option<Role> {
        self.roles.iter().filter_map(|r| Role::parse(r)).max()
    }

    pub fn is_platform_admin(&self) -> bool {
        self.roles.iter().any(|r| r == PLATFORM_ADMIN)
    }

    /// The `svc:` roles among the claims.
    pub fn service_roles(&self) -> Vec<String> {
        self.roles
            .iter()
            .filter(|role| role.starts_with(SERVICE_ROLE_PREFIX))
            .cloned()
            .collect()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Key material for one algorithm. PEM keys select EdDSA or RS256 by their type.
#[derive(Clone)]
pub enum KeyMaterial {
    /// Shared secret (HS256): for local use, where one process signs and verifies.
    Hs256(Vec<u8>),
    /// Ed25519 key, PEM (public for verifying, PKCS#8 private for signing).
    EdDsaPem(Vec<u8>),
    /// RSA key, PEM (public for verifying, private for signing).
    Rs256Pem(Vec<u8>),
}

impl std::fmt::Debug for KeyMaterial {
    // Never print key bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyMaterial::Hs256(_) => "Hs256(..)",
            KeyMaterial::EdDsaPem(_) => "EdDsaPem(..)",
            KeyMaterial::Rs256Pem(_) => "Rs256Pem(..)",
        })
    }
}

impl KeyMaterial {
    /// A PEM key; EdDSA when it says ED25519 or is a short PKCS#8/SPKI key, else RS256.
    pub fn from_pem(pem: Vec<u8>) -> Self {
        let text = String::from_utf8_lossy(&pem);
        // An Ed25519 key is ~120 bytes of PEM; RSA keys are several hundred.
        if text.contains("ED25519") || text.trim().len() < 200 {
            KeyMaterial::EdDsaPem(pem)
        } else {
            KeyMaterial::Rs256Pem(pem)
        }
    }

    fn algorithm(&self) -> Algorithm {
        match self {
            KeyMaterial::Hs256(_) => Algorithm::HS256,
            KeyMaterial::EdDsaPem(_) => Algorithm::EdDSA,
            KeyMaterial::Rs256Pem(_) => Algorithm::RS256,
        }
    }
}

/// What a verifier accepts.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub key: KeyMaterial,
    /// How long a verified token is remembered (never past its expiry).
    pub cache_ttl: Duration,
    /// The longest lifetime (`exp - iat`) a token may have; a longer one is
    /// refused. Revocations are remembered this long.
    pub max_lifetime: Duration,
}

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: u64 = 5;
/// The default of `MOSAIC_JWT_MAX_LIFETIME_SECS`: one day.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

const CACHE_CAPACITY: usize = 16_384;

/// A verified token, as it was sent → its claims and until when they may be reused.
type VerifiedCache = HashMap<Box<str>, (Arc<Claims>, Instant)>;

/// Verifies bearer tokens. Verified tokens are cached for a short while keyed by
/// the token itself, so a hot path does not re-check a signature on every call.
/// A hit is the very text that was verified (the map's SipHash only finds the
/// slot; the whole token is compared): no collision can stand in for another
/// token. Keying by the token's SHA-256 instead cost more than the rest of
/// the cache's work (software SHA-256 of a ~400-byte token on every call:
/// 10% of mosaic-billing's instructions per Consume).
#[derive(Clone)]
pub struct TokenVerifier {
    config: Arc<AuthConfig>,
    key: Arc<DecodingKey>,
    validation: Arc<Validation>,
    cache: Arc<Mutex<VerifiedCache>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("config", &self.config)
            .finish()
    }
}

impl TokenVerifier {
    pub fn new(config: AuthConfig) -> Result<Self, KeyError> {
        let alg = config.key.algorithm();
        let key = match &config.key {
            KeyMaterial::Hs256(secret) => DecodingKey::from_secret(secret),
            KeyMaterial::EdDsaPem(pem) => DecodingKey::from_ed_pem(pem)?,
            KeyMaterial::Rs256Pem(pem) => DecodingKey::from_rsa_pem(pem)?,
        };
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Ok(Self {
            config: Arc::new(config),
            key: Arc::new(key),
            validation: Arc::new(validation),
            cache: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The claims of a valid token, else UNAUTHENTICATED with a reason:
    /// `TOKEN_EXPIRED`, `TOKEN_NOT_YET_VALID` (`nbf` ahead, or `iat` in the
    /// future beyond [`LEEWAY_SECS`]) or `TOKEN_INVALID` (bad signature,
    /// issuer, audience, or a lifetime over the maximum).
    pub fn verify(&self, token: &str) -> ApiResult<Arc<Claims>> {
        let now = Instant::now();
        let cached = self.cache.lock().ok().and_then(|cache| {
            cache
                .get(token)
                .filter(|(_, until)| *until > now)
                .map(|(c, _)| c.clone())
        });
        if let Some(claims) = cached {
            return Ok(claims);
        }
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                match e.kind() {
                    ErrorKind::ExpiredSignature => {
                        ApiError::unauthenticated("TOKEN_EXPIRED", "the token has expired")
                    }
                    ErrorKind::ImmatureSignature => not_yet_valid(),
                    _ => ApiError::unauthenticated("TOKEN_INVALID", "the token is not valid"),
                }
            })?;
        let claims = data.claims;
        if claims.iat > unix_now() + LEEWAY_SECS {
            return Err(not_yet_valid());
        }
        if claims.exp.saturating_sub(claims.iat) > self.config.max_lifetime.as_secs() {
            return Err(ApiError::unauthenticated(
                "TOKEN_INVALID",
                "the token lives longer than this server accepts",
            ));
        }
        let claims = Arc::new(claims);
        let left = Duration::from_secs(claims.exp.saturating_sub(unix_now()));
        let until = now + left.min(self.config.cache_ttl);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, (_, u)| *u > now);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(token.into(), (claims.clone(), until));
        }
        Ok(claims)
    }
}

fn not_yet_valid() -> ApiError {
    ApiError::unauthenticated("TOKEN_NOT_YET_VALID", "the token is not valid yet")
}

/// Signs tokens (identity's token exchange, and `mosaic token` for local probing).
#[derive(Clone)]
pub struct TokenSigner {
    header: Header,
    key: Arc<EncodingKey>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("alg", &self.header.alg)
            .finish()
    }
}

impl TokenSigner {
    /// `key` is the HS256 secret or a private PEM key.
    pub fn new(key: &KeyMaterial) -> Result<Self, KeyError> {
        let encoding = match key {
            KeyMaterial::Hs256(secret) => EncodingKey::from_secret(secret),
            KeyMaterial::EdDsaPem(pem) => EncodingKey::from_ed_pem(pem)?,
            KeyMaterial::Rs256Pem(pem) => EncodingKey::from_rsa_pem(pem)?,
        };
        Ok(Self {
            header: Header::new(key.algorithm()),
            key: Arc::new(encoding),
        })
    }

    pub fn sign(&self, claims: &Claims) -> ApiResult<String> {
        jsonwebtoken::encode(&self.header, claims, &self.key).map_err(ApiError::internal)
    }
}

/// A service's own short-lived token for one service role, with no tenant
/// (the request names the tenant): conversations calls billing as
/// `svc:charging`, crm calls agents as `svc:subjects`. Signed on first use and
/// again at half its lifetime, so a long-running task never sends one that
/// is about to run out.
pub struct ServiceToken {
    signer: TokenSigner,
    auth: AuthConfig,
    principal: &'static str,
    role: &'static str,
    cached: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for ServiceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceToken")
            .field("principal", &self.principal)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ServiceToken {
    /// How long each token is valid.
    pub const TTL: Duration = Duration::from_secs(300);

    /// Tokens of `principal` (`service:crm`) holding `role` (`svc:subjects`).
    pub fn new(
        signer: TokenSigner,
        auth: AuthConfig,
        principal: &'static str,
        role: &'static str,
    ) -> Self {
        Self {
            signer,
            auth,
            principal,
            role,
            cached: Mutex::new(None),
        }
    }

    /// The current token, signed again when half its lifetime has passed.
    pub fn get(&self) -> ApiResult<String> {
        let mut cached = self
            .cached
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let claims = Claims::new(
            &self.auth,
            self.principal.to_owned(),
            None,
            vec![self.role.to_owned()],
            Self::TTL,
        );
        let token = self.signer.sign(&claims)?;
        *cached = Some((token.clone(), Instant::now() + Self::TTL / 2));
        Ok(token)
    }
}

/// Why a key could not be loaded.
pub type KeyError = jsonwebtoken::errors::Error;

/// `MOSAIC_JWT_ISSUER`, `MOSAIC_JWT_AUDIENCE`: required claims (default `mosaic`).
pub const ISSUER: &str = "MOSAIC_JWT_ISSUER";
pub const AUDIENCE: &str = "MOSAIC_JWT_AUDIENCE";
/// `MOSAIC_JWT_PUBLIC_KEY`: PEM (EdDSA or RS256) that verifies tokens.
pub const PUBLIC_KEY: &str = "MOSAIC_JWT_PUBLIC_KEY";
/// `MOSAIC_JWT_PRIVATE_KEY`: PEM that signs tokens (identity).
pub const PRIVATE_KEY: &str = "MOSAIC_JWT_PRIVATE_KEY";
/// `MOSAIC_JWT_HS256_SECRET`: the local alternative to a key pair, at least 32 characters.
pub const HS256_SECRET: &str = "MOSAIC_JWT_HS256_SECRET";
/// `MOSAIC_JWT_MAX_LIFETIME_SECS`: the longest token lifetime accepted (default a day).
pub const MAX_LIFETIME_SECS: &str = "MOSAIC_JWT_MAX_LIFETIME_SECS";

/// Token settings: what a verifier accepts, and the signing key if this
/// process has one.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub verify: AuthConfig,
    pub signing_key: Option<KeyMaterial>,
}

impl TokenSettings {
    /// From [`ISSUER`], [`AUDIENCE`] and the keys: [`PUBLIC_KEY`] to verify
    /// and [`PRIVATE_KEY`] to sign, or [`HS256_SECRET`] for both (local use).
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let issuer = env.string(ISSUER, "mosaic")?;
        let audience = env.string(AUDIENCE, "mosaic")?;
        let (verify, signing_key) = match (env.secret(PUBLIC_KEY)?, env.secret(HS256_SECRET)?) {
            (Some(public), _) => (
                KeyMaterial::from_pem(public.expose().as_bytes().to_vec()),
                env.secret(PRIVATE_KEY)?
                    .map(|private| KeyMaterial::from_pem(private.expose().as_bytes().to_vec())),
            ),
            (None, Some(secret)) => {
                if secret.expose().len() < 32 {
                    return Err(ConfigError::invalid_secret(
                        HS256_SECRET,
                        "at least 32 characters",
                    ));
                }
                let key = KeyMaterial::Hs256(secret.expose().as_bytes().to_vec());
                (key.clone(), Some(key))
            }
            (None, None) => {
                return Err(ConfigError::missing(
                    PUBLIC_KEY,
                    format!(
                        "tokens are verified with it (PEM), or, for local use, with {HS256_SECRET}"
                    ),
                ));
            }
        };
        Ok(Self {
            verify: AuthConfig {
                issuer,
                audience,
                key: verify,
                cache_ttl: Duration::from_secs(30),
                max_lifetime: env
                    .positive_secs(MAX_LIFETIME_SECS, DEFAULT_MAX_LIFETIME.as_secs())?,
            },
            signing_key,
        })
    }

    /// The signing key, or why this process cannot sign.
    pub fn signer(&self) -> Result<TokenSigner, ConfigError> {
        let key = self.signing_key.as_ref().ok_or_else(|| {
            ConfigError::missing(
                PRIVATE_KEY,
                format!("this process signs tokens (or set {HS256_SECRET} for local use)"),
            )
        })?;
        TokenSigner::new(key).map_err(|e| ConfigError::invalid_secret(PRIVATE_KEY, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &[u8]) -> AuthConfig {
        AuthConfig {
            issuer: "iss".into(),
            audience: "aud".into(),
            key: KeyMaterial::Hs256(secret.to_vec()),
            cache_ttl: Duration::from_secs(30),
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }

    #[test]
    fn sign_then_verify() {
        let c = config(b"k");
        let signer = TokenSigner::new(&c.key).unwrap();
        let v = TokenVerifier::new(c.clone()).unwrap();
        let claims = Claims::new(
            &c,
            "user:x".into(),
            Some(TenantId::new()),
            vec!["admin".into()],
            Duration::from_secs(60),
        );
        let t = signer.sign(&claims).unwrap();
        assert_eq!(*v.verify(&t).unwrap(), claims);
        // cached path gives the same answer
        assert_eq!(*v.verify(&t).unwrap(), claims);
        assert_eq!(claims.role(), Some(Role::Admin));
    }

    #[test]
    fn wrong_key_audience_and_expiry_are_refused() {
        let c = config(b"k");
        let v = TokenVerifier::new(c.clone()).unwrap();
        let other = TokenSigner::new(&KeyMaterial::Hs256(b"other".to_vec())).unwrap();
        let claims = Claims::new(&c, "user:x".into(), None, vec![], Duration::from_secs(60));
        assert_eq!(
            v.verify(&other.sign(&claims).unwrap())
                .unwrap_err()
                .reason(),
            "TOKEN_INVALID"
        );

        let signer = TokenSigner::new(&c.key).unwrap();
        let mut wrong_aud = claims.clone();
        wrong_aud.aud = "elsewhere".into();
        assert_eq!(
            v.verify(&signer.sign(&wrong_aud).unwrap())
                .unwrap_err()
                .reason(),
            "TOKEN_INVALID"
        );

        let mut expired = claims.clone();
        expired.exp = unix_now() - 3600;
        expired.iat = expired.exp - 60;
        assert_eq!(
            v.verify(&signer.sign(&expired).unwrap())
                .unwrap_err()
                .reason(),
            "TOKEN_EXPIRED"
        );

        assert!(v.verify("not.a.jwt").is_err());
    }

    #[test]
    fn nbf_iat_and_lifetime_are_checked_with_a_small_leeway() {
        let c = config(b"k");
        let signer = TokenSigner::new(&c.key).unwrap();
        let v = TokenVerifier::new(c.clone()).unwrap();
        let base = Claims::new(&c, "user:x".into(), None, vec![], Duration::from_secs(600));
        let now = unix_now();
        let reason = |claims: &Claims| {
            v.verify(&signer.sign(claims).unwrap())
                .map(|_| "OK".to_owned())
                .unwrap_or_else(|e| e.reason().to_owned())
        };
        let mut ahead = base.clone();
        ahead.nbf = Some(now + 3600);
        assert_eq!(reason(&ahead), "TOKEN_NOT_YET_VALID");
        let mut within = base.clone();
        within.nbf = Some(now + LEEWAY_SECS - 1);
        assert_eq!(reason(&within), "OK", "inside the leeway");
        let mut future = base.clone();
        future.iat = now + 3600;
        future.exp = future.iat + 60;
        assert_eq!(reason(&future), "TOKEN_NOT_YET_VALID");
        let mut forever = base.clone();
        forever.exp = now + DEFAULT_MAX_LIFETIME.as_secs() + 3600;
        assert_eq!(reason(&forever), "TOKEN_INVALID");
        let mut no_nbf = base;
        no_nbf.nbf = None;
        assert_eq!(reason(&no_nbf), "OK", "nbf is optional");
    }

    #[test]
    fn settings_from_a_map() {
        let hs =
            TokenSettings::from_env(&Env::from_pairs([(HS256_SECRET, "k".repeat(32))])).unwrap();
        assert_eq!(hs.verify.issuer, "mosaic");
        assert!(hs.signer().is_ok());
        let short = TokenSettings::from_env(&Env::from_pairs([(HS256_SECRET, "k")])).unwrap_err();
        assert_eq!(
            short.to_string(),
            "MOSAIC_JWT_HS256_SECRET is invalid: at least 32 characters"
        );
        let none = TokenSettings::from_env(&Env::from_pairs([(HS256_SECRET, " ")])).unwrap_err();
        assert_eq!(none.name(), PUBLIC_KEY);
    }

    #[test]
    fn eddsa_keys() {
        // Throwaway Ed25519 test key pair (RFC 8410 example encoding).
        let private = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let public = b"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let sk = KeyMaterial::from_pem(private.to_vec());
        let pk = KeyMaterial::from_pem(public.to_vec());
        assert!(matches!(pk, KeyMaterial::EdDsaPem(_)));
        let c = AuthConfig {
            key: pk,
            ..config(b"")
        };
        let claims = Claims::new(&c, "user:x".into(), None, vec![], Duration::from_secs(60));
        let t = TokenSigner::new(&sk).unwrap().sign(&claims).unwrap();
        assert_eq!(*TokenVerifier::new(c).unwrap().verify(&t).unwrap(), claims);
    }
}
