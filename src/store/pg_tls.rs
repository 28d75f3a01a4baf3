//! TLS to PostgreSQL as libpq documents it (`sslmode`, `sslrootcert`), where sqlx differs:
//!
//! - `sslmode=require` with a root certificate (given, or `~/.postgresql/root.crt`) verifies
//!   the server's CA, as `verify-ca` does;
//! - `verify-ca` and `verify-full` need a root certificate and say so, instead of quietly
//!   trusting a built-in list;
//! - `sslrootcert=system` trusts the public CAs (Mozilla's list, built in), and then only with
//!   `verify-full`.
//!
//! The public CAs are built in (webpki-roots) rather than read from the machine: a machine's
//! store can hold anything (Debian's `/etc/ssl/certs` holds its self-signed "snakeoil"
//! certificate, the very one a default PostgreSQL serves), and `verify-ca` against it would
//! then pass for any server on such a machine.
//!
//! The default stays libpq's `prefer`: TLS when the server offers it, else plain text.
//! A URL's parameters win over `PGSSLMODE` and `PGSSLROOTCERT`, as in libpq.

use std::path::{Path, PathBuf};

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::StoreError;

/// The `sslmode` values libpq knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn to_sqlx(self) -> PgSslMode {
        match self {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow => PgSslMode::Allow,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }
}

/// Which certificates the client trusts for the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    None,
    /// A PEM file of CA certificates (`sslrootcert=PATH`, or libpq's default file).
    File(PathBuf),
    /// The public CAs (`sslrootcert=system`; Mozilla's list, built in).
    System,
}

/// What the connection will do, decided from the settings before any connection is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPlan {
    pub mode: SslMode,
    pub root: RootCert,
}

/// libpq's rules. `mode` and `root_cert` are the raw settings (URL, else environment);
/// `default_root` is `~/.postgresql/root.crt` when that file exists.
pub fn plan(
    mode: Option<&str>,
    root_cert: Option<&str>,
    default_root: Option<PathBuf>,
) -> Result<TlsPlan, String> {
    let root = match root_cert {
        Some("system") => RootCert::System,
        Some(path) if !path.is_empty() => RootCert::File(PathBuf::from(path)),
        _ => default_root.map_or(RootCert::None, RootCert::File),
    };
    let mode = match mode {
        Some(value) => SslMode::parse(value).ok_or_else(|| {
            format!(
                "sslmode={value} is not a libpq sslmode; use disable, allow, prefer, require, verify-ca or verify-full"
            )
        })?,
        None if root == RootCert::System => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    match (mode, &root) {
        (SslMode::VerifyFull, _) => {}
        (_, RootCert::System) => {
            return Err(format!(
                "sslrootcert=system trusts every public CA, which is only safe when the host name is checked too: use sslmode=verify-full, not sslmode={}",
                mode.name()
            ));
        }
        _ => {}
    }
    let mode = match (mode, &root) {
        // libpq: "if a root CA file exists, the behavior of sslmode=require will be the same
        // as that of verify-ca".
        (SslMode::Require, RootCert::File(_)) => SslMode::VerifyCa,
        (SslMode::VerifyCa | SslMode::VerifyFull, RootCert::None) => {
            return Err(format!(
                "sslmode={} verifies the server's certificate, but no root certificate was given: add sslrootcert=/path/to/ca.pem (the CA that signed the server's certificate; managed databases publish theirs) to the database URL or set PGSSLROOTCERT, or use sslrootcert=system to trust the public CAs",
                mode.name()
            ));
        }
        (mode, _) => mode,
    };
    Ok(TlsPlan { mode, root })
}

/// libpq's default root certificate file, when it exists.
fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".postgresql").join("root.crt");
    path.is_file().then_some(path)
}

/// The last value of any of `keys` in the URL's query (sqlx, like libpq, lets the last win).
fn url_param(url: &url::Url, keys: &[&str]) -> Option<String> {
    url.query_pairs()
        .filter(|(k, _)| keys.contains(&k.as_ref()))
        .map(|(_, v)| v.into_owned())
        .last()
}

/// Connection options for a `postgres://` URL, with libpq's TLS rules applied.
pub fn connect_options(raw: &str) -> Result<(PgConnectOptions, TlsPlan), StoreError> {
    let bad = StoreError::BadPostgresUrl;
    let url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    let mode =
        url_param(&url, &["sslmode", "ssl-mode"]).or_else(|| std::env::var("PGSSLMODE").ok());
    let root = url_param(&url, &["sslrootcert", "ssl-root-cert", "ssl-ca"])
        .or_else(|| std::env::var("PGSSLROOTCERT").ok());
    let tls = plan(mode.as_deref(), root.as_deref(), default_root_file()).map_err(bad)?;
    let mut options = PgConnectOptions::from_url(&url)?
        .ssl_mode(tls.mode.to_sqlx())
        // Every statement only at trace level: `-v` (debug) is for prodigy's own logs.
        .log_statements(log::LevelFilter::Trace);
    options = match &tls.root {
        RootCert::File(path) => options.ssl_root_cert(path),
        // No file of our own: sqlx then trusts its built-in public CAs (webpki-roots) alone.
        RootCert::System => options.ssl_root_cert_from_pem(Vec::new()),
        RootCert::None => options,
    };
    Ok((options, tls))
}

/// A failed connection, with what to do about it when TLS is the cause.
pub fn connect_error(e: sqlx::Error, tls: &TlsPlan, host: &str) -> StoreError {
    let detail = e.to_string();
    // A refused certificate surfaces as an I/O error of the handshake, not as `Error::Tls`.
    let tls_failed = match &e {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(_) => detail.contains("peer certificate") || detail.contains("alert"),
        _ => false,
    };
    if !tls_failed {
        return StoreError::Db(e);
    }
    let root = match &tls.root {
        RootCert::File(path) => format!("sslrootcert={}", path.display()),
        RootCert::System => "the public CAs of sslrootcert=system".to_string(),
        RootCert::None => "no root certificate".to_string(),
    };
    let hint = if detail.contains("UnknownIssuer") || detail.contains("BadSignature") {
        format!(
            "the server's certificate is not signed by a CA the client trusts ({root}): point sslrootcert at the CA certificate that signed it (your provider publishes it), or use sslmode=require to encrypt without verifying the server"
        )
    } else if detail.contains("NotValidForName") || detail.contains("not valid for name") {
        format!(
            "the server's certificate does not name the host '{host}' (sslmode=verify-full checks that): connect with a host name the certificate names, or use sslmode=verify-ca to check the CA only"
        )
    } else if detail.contains("xpired") || detail.contains("not valid yet") {
        "the server's certificate is outside its validity period: the server needs a current certificate (check the clocks too)".to_string()
    } else if detail.contains("does not support TLS") {
        format!(
            "the server has TLS off: turn `ssl = on` on the server, or use sslmode=prefer or disable instead of sslmode={}",
            tls.mode.name()
        )
    } else if detail.contains("No such file") || detail.contains("not found") {
        format!("cannot read {root}: check that the path in sslrootcert exists and is readable")
    } else {
        format!(
            "sslmode={} with {root}; see the README's PostgreSQL TLS section",
            tls.mode.name()
        )
    };
    StoreError::Tls { detail, hint }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> RootCert {
        RootCert::File(PathBuf::from(p))
    }

    #[test]
    fn no_sslmode_is_libpqs_prefer() {
        let p = plan(None, None, None).unwrap();
        assert_eq!(p.mode, SslMode::Prefer);
        assert_eq!(p.root, RootCert::None);
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_ca() {
        let p = plan(Some("require"), Some("/ca.pem"), None).unwrap();
        assert_eq!(p.mode, SslMode::VerifyCa);
        assert_eq!(p.root, file("/ca.pem"));
        // libpq's default file counts as a root certificate too.
        let p = plan(
            Some("require"),
            None,
            Some(PathBuf::from("/home/u/.postgresql/root.crt")),
        )
        .unwrap();
        assert_eq!(p.mode, SslMode::VerifyCa);
    }

    #[test]
    fn require_without_a_root_certificate_only_encrypts() {
        assert_eq!(
            plan(Some("require"), None, None).unwrap().mode,
            SslMode::Require
        );
    }

    #[test]
    fn verifying_modes_need_a_root_certificate() {
        for mode in ["verify-ca", "verify-full"] {
            let err = plan(Some(mode), None, None).unwrap_err();
            assert!(err.contains(&format!("sslmode={mode}")), "{err}");
            assert!(err.contains("sslrootcert="), "{err}");
        }
        let p = plan(Some("verify-full"), Some("/ca.pem"), None).unwrap();
        assert_eq!((p.mode, p.root), (SslMode::VerifyFull, file("/ca.pem")));
    }

    #[test]
    fn system_roots_default_to_and_require_verify_full() {
        let p = plan(None, Some("system"), None).unwrap();
        assert_eq!((p.mode, p.root), (SslMode::VerifyFull, RootCert::System));
        for weaker in ["require", "verify-ca", "prefer"] {
            let err = plan(Some(weaker), Some("system"), None).unwrap_err();
            assert!(err.contains("verify-full"), "{err}");
        }
    }

    #[test]
    fn an_unknown_sslmode_names_the_valid_ones() {
        let err = plan(Some("required"), None, None).unwrap_err();
        assert!(
            err.contains("sslmode=required") && err.contains("verify-full"),
            "{err}"
        );
    }

    #[test]
    fn the_url_wins_over_the_default_root_file_and_the_last_parameter_wins() {
        let url = url::Url::parse("postgres://h/db?sslmode=disable&sslmode=require").unwrap();
        assert_eq!(url_param(&url, &["sslmode"]).as_deref(), Some("require"));
        let p = plan(
            Some("verify-ca"),
            Some("/given.pem"),
            Some(PathBuf::from("/default.crt")),
        )
        .unwrap();
        assert_eq!(p.root, file("/given.pem"));
    }
}
