//! Connecting to NATS from a URL list that may carry credentials.
//!
//! async-nats ignores the `user:password@` part of a server URL, so it is taken out
//! here and handed to the client as its authentication: `nats://user:pass@host`
//! authenticates with a user and password, `nats://token@host` with a token (the
//! NATS CLI's conventions). The servers are then given without credentials.

use std::path::PathBuf;

use async_nats::{ConnectOptions, ServerAddr};
use percent_encoding::percent_decode_str;

/// How to reach and authenticate to NATS; every flag also reads an environment
/// variable. Shared by the gateway and the worker.
#[derive(Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server(s), comma-separated. Credentials may go in the URL:
    /// `nats://user:password@host:4222` or `nats://token@host:4222`; `tls://` asks
    /// for TLS.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,

    /// A `.creds` file (user JWT and NKey seed) to authenticate with.
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<PathBuf>,

    /// An NKey seed (`SU...`) to authenticate with.
    #[arg(long = "nats-nkey", env = "NATS_NKEY", hide_env_values = true)]
    pub nkey: Option<String>,

    /// PEM file of the CA that signed the NATS server's certificate; makes TLS
    /// required.
    #[arg(long = "nats-tls-ca", env = "NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl std::fmt::Debug for NatsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsArgs")
            .field("url", &crate::telemetry::redact_url(&self.url))
            .field("creds", &self.creds)
            .field("nkey", &self.nkey.as_ref().map(|_| "***"))
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

impl NatsArgs {
    /// The servers to connect to and the options that authenticate (and secure)
    /// the connection.
    pub async fn connect_options(&self) -> Result<(ConnectOptions, Vec<ServerAddr>), NatsUrlError> {
        let (mut options, servers) = connect_options(&self.url)?;
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|err| NatsUrlError::Credentials(format!("{}: {err}", creds.display())))?;
        }
        if let Some(seed) = &self.nkey {
            options = options.nkey(seed.clone());
        }
        if let Some(ca) = &self.tls_ca {
            if !ca.is_file() {
                return Err(NatsUrlError::Credentials(format!(
                    "the NATS CA file {} does not exist",
                    ca.display()
                )));
            }
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        Ok((options, servers))
    }

    /// The URLs, fit for logs.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(|url| crate::telemetry::redact_url(url.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The name a process gives its NATS connection, `<role>@<host>` (`gateway@web-1`,
/// `worker@gpu-3`), so a NATS server's connection list (`nats server report
/// connections`, `/connz`) shows who is who.
pub fn connection_name(role: &str) -> String {
    format!("{role}@{}", gethostname::gethostname().to_string_lossy())
}

/// Why a NATS URL list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsUrlError {
    #[error("{url} is not a NATS server URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("the NATS URLs carry different credentials; give them once")]
    ConflictingCredentials,
    #[error("no NATS server URL given")]
    Empty,
    #[error("cannot use the NATS credentials: {0}")]
    Credentials(String),
}

/// The servers of a comma-separated URL list, and connect options carrying the
/// credentials some of them held.
pub fn connect_options(urls: &str) -> Result<(ConnectOptions, Vec<ServerAddr>), NatsUrlError> {
    let mut servers = Vec::new();
    let mut credentials: Option<(String, Option<String>)> = None;
    for url in urls.split(',').map(str::trim).filter(|url| !url.is_empty()) {
        let invalid = |reason: String| NatsUrlError::Invalid {
            url: crate::telemetry::redact_url(url),
            reason,
        };
        let mut server: ServerAddr = url
            .parse()
            .map_err(|err: std::io::Error| invalid(err.to_string()))?;
        if let Some(user) = server.username() {
            let decode = |text: &str| percent_decode_str(text).decode_utf8_lossy().into_owned();
            let found = (decode(user), server.password().map(decode));
            match &credentials {
                Some(known) if *known != found => return Err(NatsUrlError::ConflictingCredentials),
                _ => credentials = Some(found),
            }
            let bare = format!("{}://{}:{}", server.scheme(), server.host(), server.port());
            server = bare
                .parse()
                .map_err(|err: std::io::Error| invalid(err.to_string()))?;
        }
        servers.push(server);
    }
    if servers.is_empty() {
        return Err(NatsUrlError::Empty);
    }
    let options = match credentials {
        Some((user, Some(password))) => ConnectOptions::with_user_and_password(user, password),
        Some((token, None)) => ConnectOptions::with_token(token),
        None => ConnectOptions::new(),
    };
    Ok((options, servers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(servers: &[ServerAddr]) -> Vec<String> {
        servers
            .iter()
            .map(|s| format!("{}:{}:{}", s.host(), s.port(), s.has_user_pass()))
            .collect()
    }

    #[test]
    fn credentials_are_taken_out_of_the_urls() {
        let (_, servers) =
            connect_options("nats://app:p%40ss@10.0.0.1:4222, nats://app:p%40ss@10.0.0.2:4223")
                .unwrap();
        assert_eq!(
            hosts(&servers),
            ["10.0.0.1:4222:false", "10.0.0.2:4223:false"]
        );
    }

    #[test]
    fn urls_without_credentials_pass_through() {
        let (_, servers) = connect_options("nats://127.0.0.1:4222").unwrap();
        assert_eq!(hosts(&servers), ["127.0.0.1:4222:false"]);
    }

    #[test]
    fn conflicting_or_missing_urls_are_refused() {
        assert!(matches!(
            connect_options("nats://a:b@h1:1,nats://c:d@h2:2"),
            Err(NatsUrlError::ConflictingCredentials)
        ));
        assert!(matches!(connect_options(" , "), Err(NatsUrlError::Empty)));
    }

    #[test]
    fn a_connection_is_named_after_its_role_and_host() {
        let name = connection_name("gateway");
        let host = name.strip_prefix("gateway@").expect("role@host");
        assert!(!host.is_empty());
    }

    #[test]
    fn errors_never_show_the_password() {
        let err = connect_options("nats://user:s3cret@bad host")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
