//! How clients reach a test Redis: as which user, with which password, in the
//! clear or over TLS. One description serves a standalone server, every node
//! of a cluster and a sentinel set, so a test of credentials or TLS runs the
//! same in every deployment.

use crate::Certificates;

/// Who may talk to a test Redis, and how. The default is anyone, in the clear.
#[derive(Debug, Clone, Default)]
pub struct RedisAccess {
    /// An ACL user; the `default` user is then switched off.
    user: Option<String>,
    password: Option<String>,
    /// The user's ACL rules on the servers (every key, channel and command
    /// when `None`). A restricted user cannot replicate: an administrator of
    /// the same password, [`ADMIN`], then serves replication, the sentinels
    /// and the test's own `redis-cli`.
    rules: Option<Vec<String>>,
    tls: Option<TlsFiles>,
}

/// The user who replicates, and whom the sentinels and tests log in as, beside
/// a user of restricted rights.
const ADMIN: &str = "admin";

#[derive(Debug, Clone)]
struct TlsFiles {
    ca: String,
    cert: String,
    key: String,
}

impl RedisAccess {
    /// The `default` user, with `password` (`requirepass`).
    pub fn password(password: &str) -> Self {
        Self {
            password: Some(password.to_owned()),
            ..Self::default()
        }
    }

    /// Only the ACL user `name`, with `password`.
    pub fn user(name: &str, password: &str) -> Self {
        Self {
            user: Some(name.to_owned()),
            password: Some(password.to_owned()),
            ..Self::default()
        }
    }

    /// The user may do only what `rules` allow on the servers (`~prefix*`,
    /// `+get`, ...).
    pub fn with_rules(mut self, rules: &[&str]) -> Self {
        self.rules = Some(rules.iter().map(|rule| (*rule).to_owned()).collect());
        self
    }

    /// Who replicates and administers: the user, or [`ADMIN`] beside a
    /// restricted one.
    fn admin(&self) -> Option<&str> {
        match (&self.user, &self.rules) {
            (Some(_), Some(_)) => Some(ADMIN),
            (user, None) => user.as_deref(),
            (None, Some(_)) => None,
        }
    }

    /// Speaks only TLS, with `certificates`' server certificate (clients need
    /// no certificate of their own).
    pub fn over_tls(mut self, certificates: &Certificates) -> Self {
        self.tls = Some(TlsFiles {
            ca: certificates.ca.display().to_string(),
            cert: certificates.server_cert.display().to_string(),
            key: certificates.server_key.display().to_string(),
        });
        self
    }

    /// The CA file a client needs, when over TLS.
    pub fn tls_ca(&self) -> Option<&str> {
        self.tls.as_ref().map(|tls| tls.ca.as_str())
    }

    /// The URL of the server on `port`, with the credentials.
    pub fn url(&self, port: u16) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let credentials = match (&self.user, &self.password) {
            (Some(user), Some(password)) => format!("{user}:{password}@"),
            (None, Some(password)) => format!(":{password}@"),
            _ => String::new(),
        };
        format!("{scheme}://{credentials}127.0.0.1:{port}")
    }

    /// The same URL with another password, to be refused.
    pub fn url_with_password(&self, port: u16, password: &str) -> String {
        Self {
            password: Some(password.to_owned()),
            ..self.clone()
        }
        .url(port)
    }

    /// Configuration directives (`name value…`) for a server listening on
    /// `port`, replicating from a master with the same access.
    pub(crate) fn server_directives(&self, port: u16) -> Vec<Vec<String>> {
        let mut directives = self.listen_directives(port);
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                let mut rules = strings(&["user", user, "on", &format!(">{password}")]);
                rules.extend(self.rules.clone().unwrap_or_else(every_right));
                directives.push(rules);
                let admin = self.admin().expect("a user");
                if admin != user {
                    directives.push(acl_user(admin, password));
                }
                directives.push(strings(&["user", "default", "off"]));
                directives.push(strings(&["masteruser", admin]));
                directives.push(strings(&["masterauth", password]));
            }
            (None, Some(password)) => {
                directives.push(strings(&["requirepass", password]));
                directives.push(strings(&["masterauth", password]));
            }
            _ => {}
        }
        directives
    }

    /// Configuration directives for a sentinel on `port` that this access lets
    /// in, watching `master` (already declared with `sentinel monitor`), whose
    /// servers `servers` lets in; the other sentinels have this access too.
    pub(crate) fn sentinel_directives(
        &self,
        port: u16,
        master: &str,
        servers: &RedisAccess,
    ) -> Vec<Vec<String>> {
        let mut directives = self.listen_directives(port);
        if let Some(password) = &self.password {
            match &self.user {
                Some(user) => {
                    // The sentinels give every user every right; the rules
                    // restrict the user on the servers.
                    directives.push(acl_user(user, password));
                    if let Some(admin) = self.admin().filter(|admin| admin != user) {
                        directives.push(acl_user(admin, password));
                    }
                    directives.push(strings(&["user", "default", "off"]));
                    directives.push(strings(&["sentinel", "sentinel-user", user]));
                }
                None => directives.push(strings(&["requirepass", password])),
            }
            directives.push(strings(&["sentinel", "sentinel-pass", password]));
        }
        if let Some(password) = &servers.password {
            if let Some(user) = servers.admin() {
                directives.push(strings(&["sentinel", "auth-user", master, user]));
            }
            directives.push(strings(&["sentinel", "auth-pass", master, password]));
        }
        directives
    }

    fn listen_directives(&self, port: u16) -> Vec<Vec<String>> {
        let port = port.to_string();
        match &self.tls {
            None => vec![strings(&["port", &port])],
            Some(tls) => vec![
                strings(&["port", "0"]),
                strings(&["tls-port", &port]),
                strings(&["tls-cert-file", &tls.cert]),
                strings(&["tls-key-file", &tls.key]),
                strings(&["tls-ca-cert-file", &tls.ca]),
                strings(&["tls-auth-clients", "no"]),
                // Replicas, cluster nodes and sentinels speak TLS to each other too.
                strings(&["tls-replication", "yes"]),
                strings(&["tls-cluster", "yes"]),
            ],
        }
    }

    /// What `redis-cli` needs to reach the server.
    pub(crate) fn cli_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(tls) = &self.tls {
            args.extend(strings(&["--tls", "--cacert", &tls.ca]));
        }
        if let Some(user) = self.admin() {
            args.extend(strings(&["--user", user]));
        }
        if let Some(password) = &self.password {
            args.extend(strings(&["-a", password, "--no-auth-warning"]));
        }
        args
    }
}

/// `directives` as `redis-server` command line arguments.
pub(crate) fn as_arguments(directives: Vec<Vec<String>>) -> Vec<String> {
    directives
        .into_iter()
        .flat_map(|mut directive| {
            directive[0].insert_str(0, "--");
            directive
        })
        .collect()
}

/// `directives` as lines of a configuration file.
pub(crate) fn as_config_file(directives: Vec<Vec<String>>) -> String {
    directives
        .into_iter()
        .map(|directive| directive.join(" ") + "\n")
        .collect()
}

/// A user with every right.
fn acl_user(user: &str, password: &str) -> Vec<String> {
    let mut directive = strings(&["user", user, "on", &format!(">{password}")]);
    directive.extend(every_right());
    directive
}

fn every_right() -> Vec<String> {
    strings(&["~*", "&*", "+@all"])
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}
