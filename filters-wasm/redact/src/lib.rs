//! The `redact` transform: masks e-mail addresses, IPv4 addresses and `key=value` secrets
//! in log messages before they reach a client.
//!
//! Params (all optional, all `true` by default): `{ "emails": bool, "ipv4": bool,
//! "secrets": bool }`. Secrets are values after `password`, `passwd`, `pwd`, `secret`,
//! `token`, `api_key`/`api-key`/`apikey`, `access_key` followed by `=` or `:`.
//! Masks: `[email]`, `[ipv4]`, `<key>=[redacted]`.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

wit_bindgen::generate!({
    path: "../../wit",
    world: "transform-plugin",
});

use exports::logstream::plugin::transform::Guest;
use logstream::plugin::types::LogEntry;

struct Options {
    emails: bool,
    ipv4: bool,
    secrets: bool,
}

fn parse(params: &str) -> Result<Options, String> {
    let value: Value = serde_json::from_str(params).map_err(|e| format!("params: not JSON: {e}"))?;
    let obj = value.as_object().ok_or("params: must be an object")?;
    let mut o = Options {
        emails: true,
        ipv4: true,
        secrets: true,
    };
    for (key, value) in obj {
        let flag = value.as_bool().ok_or_else(|| format!("{key}: must be true or false"))?;
        match key.as_str() {
            "emails" => o.emails = flag,
            "ipv4" => o.ipv4 = flag,
            "secrets" => o.secrets = flag,
            other => return Err(format!("{other}: unknown field; expected emails, ipv4 or secrets")),
        }
    }
    Ok(o)
}

struct Patterns {
    email: Regex,
    ipv4: Regex,
    secret: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        email: Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}").expect("email pattern"),
        ipv4: Regex::new(r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\b")
            .expect("ipv4 pattern"),
        secret: Regex::new(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)(\s*[=:]\s*)[^\s,;&]+")
            .expect("secret pattern"),
    })
}

fn redact(message: &str, o: &Options) -> String {
    let p = patterns();
    let mut out = message.to_owned();
    if o.secrets {
        out = p.secret.replace_all(&out, "${1}${2}[redacted]").into_owned();
    }
    if o.emails {
        out = p.email.replace_all(&out, "[email]").into_owned();
    }
    if o.ipv4 {
        out = p.ipv4.replace_all(&out, "[ipv4]").into_owned();
    }
    out
}

struct Redact;

impl Guest for Redact {
    fn validate(params: String) -> Result<(), String> {
        parse(&params).map(|_| ())
    }

    fn apply(params: String, batch: Vec<LogEntry>) -> Result<Vec<LogEntry>, String> {
        let o = parse(&params)?;
        Ok(batch
            .into_iter()
            .map(|mut entry| {
                entry.message = redact(&entry.message, &o);
                entry
            })
            .collect())
    }
}

export!(Redact);
