//! Connecting to NATS from a URL list that may carry credentials.
//!
//! async-nats ignores the `user:password@` part of a server URL, so it is taken out
//! here and handed to the client as its authentication: `nats://user:pass@host`
//! authenticates with a user and password, `nats://token@host` with a token (the
//! NATS CLI's conventions). The servers are then given without credentials.

use async_nats::{ConnectOptions, ServerAddr};
use percent_encoding::percent_decode_str;

/// Why a NATS URL list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsUrlError {
    #[error("{url} is not a NATS server URL: {reason}")]
    Invalid { url: String, reason: String },
    #[error("the NATS URLs carry different credentials; give them once")]
    ConflictingCredentials,
    #[error("no NATS server URL given")]
    Empty,
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
    fn errors_never_show_the_password() {
        let err = connect_options("nats://user:s3cret@bad host")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
