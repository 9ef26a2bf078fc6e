//! Passwords: argon2id (the crate's defaults: 19 MiB, 2 passes) with a random salt, kept as
//! PHC strings; never stored or answered in clear. Used by EDS's users and by the platform's
//! accounts (the account API of the Enginio dashboard era).

use crate::EdsError;

/// A PHC string for `password`.
pub fn hash(password: &str) -> Result<String, EdsError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| EdsError::Storage(format!("no entropy: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| EdsError::Storage(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| EdsError::Storage(format!("cannot hash a password: {e}")))
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to check against when the name is unknown, so a wrong name takes as long as a
/// wrong password and does not tell which names exist.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("not a password").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hashes_verify_and_differ_per_salt() {
        let a = super::hash("pw").unwrap();
        let b = super::hash("pw").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b);
        assert!(super::verify("pw", &a) && !super::verify("px", &a));
        assert!(!super::verify("pw", "not a hash"));
    }
}
