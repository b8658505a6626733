//! Environment variables that were renamed, still read under their old name.
//!
//! The rule for names: a setting of one binary is `GATEWAY_*` or `WORKER_*`;
//! how to reach a service both share is `NATS_*` or `REDIS_*`; standards keep
//! their own (`OTEL_*`, `RUST_LOG`). A variable renamed to follow it keeps
//! working under its old name: when the old one is set, the new one is not and
//! the flag is not given, its value is passed as the flag, and a deprecation
//! warning is logged. Passing it as a flag, rather than setting the new
//! variable, keeps the environment untouched (setting it is `unsafe` here).

use std::ffi::OsString;

/// A variable renamed: the old name, the new one, and the flag both feed.
#[derive(Debug, Clone, Copy)]
pub struct Renamed {
    pub old: &'static str,
    pub new: &'static str,
    pub flag: &'static str,
}

/// The process's command line, with the value of each renamed variable still
/// set under its old name added as its flag; and the warnings to log for them.
pub fn command_line(renamed: &[Renamed]) -> (Vec<OsString>, Vec<String>) {
    let args: Vec<OsString> = std::env::args_os().collect();
    with_renamed(args, renamed, |name| std::env::var_os(name))
}

fn with_renamed(
    mut args: Vec<OsString>,
    renamed: &[Renamed],
    env: impl Fn(&str) -> Option<OsString>,
) -> (Vec<OsString>, Vec<String>) {
    let mut warnings = Vec::new();
    for rename in renamed {
        let Some(value) = env(rename.old) else {
            continue;
        };
        let flag_given = args.iter().any(|arg| {
            let arg = arg.to_string_lossy();
            arg == rename.flag || arg.starts_with(&format!("{}=", rename.flag))
        });
        if env(rename.new).is_some() || flag_given {
            warnings.push(format!(
                "{} is deprecated and ignored here: {} or {} is set",
                rename.old, rename.new, rename.flag
            ));
            continue;
        }
        let mut flag = OsString::from(rename.flag);
        flag.push("=");
        flag.push(&value);
        args.push(flag);
        warnings.push(format!(
            "{} is deprecated; set {} instead (read this time)",
            rename.old, rename.new
        ));
    }
    (args, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENAMED: &[Renamed] = &[Renamed {
        old: "LOG_FORMAT",
        new: "GATEWAY_LOG_FORMAT",
        flag: "--log-format",
    }];

    fn run(args: &[&str], env: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
        let args = args.iter().map(OsString::from).collect();
        let (args, warnings) = with_renamed(args, RENAMED, |name| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        });
        let args = args
            .into_iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        (args, warnings)
    }

    #[test]
    fn an_old_name_alone_becomes_the_flag_with_a_warning() {
        let (args, warnings) = run(&["gateway"], &[("LOG_FORMAT", "json")]);
        assert_eq!(args, ["gateway", "--log-format=json"]);
        assert!(warnings[0].contains("set GATEWAY_LOG_FORMAT instead"));
    }

    #[test]
    fn the_new_name_or_the_flag_wins_over_the_old_name() {
        let (args, warnings) = run(
            &["gateway"],
            &[("LOG_FORMAT", "json"), ("GATEWAY_LOG_FORMAT", "text")],
        );
        assert_eq!(args, ["gateway"]);
        assert!(warnings[0].contains("ignored"));
        let (args, _) = run(
            &["gateway", "--log-format", "text"],
            &[("LOG_FORMAT", "json")],
        );
        assert_eq!(args, ["gateway", "--log-format", "text"]);
        let (args, warnings) = run(&["gateway"], &[]);
        assert_eq!(args, ["gateway"]);
        assert!(warnings.is_empty());
    }
}
