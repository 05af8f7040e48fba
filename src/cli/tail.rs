//! `logstream tail`: follow logs from a terminal, like `kubectl logs -f` or `stern`.
//!
//! It subscribes with `resume: true`, so every log comes with its offset; after a lost
//! connection it reconnects on its own (backing off) and subscribes again with `since` set to
//! the last offset it printed: nothing is missed and nothing printed twice, as long as the
//! server's history still holds the gap (if not, it says so). Drops and errors go to stderr,
//! logs to stdout. An authentication failure ends it with exit code 2; Ctrl-C with 0.
//!
//! It asks for gzip batches (`batch: true, encoding: "gzip"`: each `log:batch` a compressed
//! binary attachment), a fraction of the bytes over a slow link; a server that refuses the
//! field (one from before it) gets the plain subscription on the same connection. With
//! `--output json` it asks for one `log:new` per log instead, so that each printed entry
//! carries its own offset (a batch has one, its last log's).
//!
//! A person who runs `tail` wants every line: it asks for the highest live rate the server
//! grants (`rateLimit`, clamped by `max_client_rate_limit`); replays are not rate-limited.
//! On a terminal it says where it connected and what it follows. If the named filter it
//! follows is removed from the server, it exits non-zero with the server's message.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::sio::{ConnectError, Incoming, SioClient, attachment};

/// How logs are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// `[time] device LEVEL message`, coloured on a terminal.
    Text,
    /// The entry as one JSON line.
    Json,
    /// The message alone.
    Raw,
}

pub struct TailOptions {
    pub server: String,
    pub token: String,
    pub devices: Vec<String>,
    pub levels: Vec<String>,
    pub tags: Vec<String>,
    pub keywords: Vec<String>,
    pub filter: Option<String>,
    /// The named filter's params (a JSON object).
    pub params: Option<Value>,
    pub transforms: Vec<String>,
    pub tail: Option<usize>,
    pub since: Option<String>,
    pub output: Output,
    pub color: bool,
    pub timestamps: bool,
    /// CAs to trust for an `https://` server instead of the public ones.
    pub ca_file: Option<std::path::PathBuf>,
    /// When the named filter is removed or disabled, follow every log the token may see
    /// instead of exiting.
    pub fallback_all: bool,
}

/// How `tail` ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("{0}")]
    Auth(String),
    /// The server's TLS could not be trusted (exit code of its own).
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Fatal(String),
}

impl TailOptions {
    /// The `log:subscribe` payload (without `since` / `tail`).
    pub fn subscription(&self) -> Result<Map<String, Value>, TailError> {
        let mut sub = Map::new();
        match &self.filter {
            Some(name) => {
                if !(self.devices.is_empty()
                    && self.levels.is_empty()
                    && self.tags.is_empty()
                    && self.keywords.is_empty())
                {
                    return Err(TailError::Fatal(
                        "-d/-l/-t/-k select with the built-in filter; with --filter, put the filter's params in --params".into(),
                    ));
                }
                sub.insert("filter".into(), json!(name));
                sub.insert(
                    "params".into(),
                    self.params.clone().unwrap_or_else(|| json!({})),
                );
            }
            None => {
                if self.params.is_some() {
                    return Err(TailError::Fatal("--params needs --filter".into()));
                }
                for (key, values) in [
                    ("deviceIds", &self.devices),
                    ("levels", &self.levels),
                    ("tags", &self.tags),
                    ("keywords", &self.keywords),
                ] {
                    if !values.is_empty() {
                        sub.insert(key.into(), json!(values));
                    }
                }
            }
        }
        if !self.transforms.is_empty() {
            let steps: Vec<Value> = self
                .transforms
                .iter()
                .map(|name| json!({ "name": name }))
                .collect();
            sub.insert("transform".into(), Value::Array(steps));
        }
        sub.insert("resume".into(), json!(true));
        sub.insert("rateLimit".into(), json!(ASK_RATE));
        Ok(sub)
    }

    /// What this run follows, in words (for the terminal).
    pub fn describe(&self) -> String {
        if let Some(name) = &self.filter {
            let params = self.params.clone().unwrap_or_else(|| json!({}));
            return format!("filter {name} {params}");
        }
        let parts: Vec<String> = [
            ("devices", &self.devices),
            ("levels", &self.levels),
            ("tags", &self.tags),
            ("keywords", &self.keywords),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k} {}", v.join(",")))
        .collect();
        if parts.is_empty() {
            "every log the token may see".into()
        } else {
            parts.join(" · ")
        }
    }
}

/// The live rate `tail` asks for: more than any server grants, so it gets the most
/// (`max_client_rate_limit`; the ack says how much).
const ASK_RATE: u32 = 1_000_000;

/// `sub` asking for gzip batches.
fn with_gzip(mut sub: Map<String, Value>) -> Map<String, Value> {
    sub.insert("batch".into(), json!(true));
    sub.insert("encoding".into(), json!("gzip"));
    sub
}

/// Whether an `error` refuses the subscription's `encoding` field.
fn refuses_encoding(error: &Value) -> bool {
    error["field"] == json!("encoding")
        || error["message"]
            .as_str()
            .is_some_and(|m| m.contains("encoding"))
}

/// Largest batch `tail` inflates (the server's batches are far smaller).
const MAX_INFLATED: u64 = 256 << 20;

/// The entries of a `log:batch` argument: a JSON array, or the gzip of one as an attachment.
fn batch_entries(arg: Option<&Value>, attachments: &[Vec<u8>]) -> Result<Vec<Value>, String> {
    use std::io::Read;
    match arg {
        Some(Value::Array(entries)) => Ok(entries.clone()),
        Some(placeholder) => {
            let gz = attachment(placeholder, attachments)
                .ok_or("log:batch without its entries or their attachment")?;
            let mut json = Vec::new();
            flate2::read::GzDecoder::new(gz)
                .take(MAX_INFLATED)
                .read_to_end(&mut json)
                .map_err(|e| format!("a gzip batch that does not inflate: {e}"))?;
            serde_json::from_slice(&json).map_err(|e| format!("a gzip batch that is not JSON: {e}"))
        }
        None => Err("log:batch without its entries".into()),
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Follow until `stop` resolves (Ctrl-C), reconnecting as needed.
pub async fn run(opts: TailOptions, stop: impl Future<Output = ()>) -> Result<(), TailError> {
    let mut base = opts.subscription()?;
    let auth = json!({ "token": opts.token });
    let tls = super::tls::client_config(opts.ca_file.as_deref()).map_err(TailError::Fatal)?;
    let mut printer = Printer::new(&opts);
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_offset: Option<String> = None;
    let mut first = true;
    let mut backoff = BACKOFF_MIN;
    tokio::pin!(stop);
    loop {
        let connected = tokio::select! {
            () = &mut stop => return Ok(()),
            c = SioClient::connect(&opts.server, &auth, &tls) => c,
        };
        let mut client = match connected {
            Ok(c) => c,
            Err(ConnectError::Refused(why)) => {
                return Err(TailError::Auth(format!(
                    "the server refused the connection: {why}"
                )));
            }
            Err(ConnectError::Tls(why)) => {
                return Err(TailError::Tls(format!("{}: {why}", opts.server)));
            }
            Err(ConnectError::Transport(why)) => {
                eprintln!(
                    "logstream tail: cannot reach {}: {why}; retrying in {:.1} s",
                    opts.server,
                    backoff.as_secs_f64()
                );
                tokio::select! {
                    () = &mut stop => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut sub = base.clone();
        match (&last_offset, first) {
            (Some(offset), _) => {
                sub.insert("since".into(), json!(offset));
            }
            (None, true) => {
                if let Some(n) = opts.tail {
                    sub.insert("tail".into(), json!(n));
                }
                if let Some(offset) = &opts.since {
                    sub.insert("since".into(), json!(offset));
                }
            }
            (None, false) => {}
        }
        let resumed = last_offset.is_some();
        let plain = sub.clone();
        // JSON output prints each entry's offset: one `log:new` per log has one each.
        let mut asked_gzip = opts.output != Output::Json;
        let first_ask = if asked_gzip { with_gzip(sub) } else { sub };
        if let Err(e) = client
            .emit("log:subscribe", &Value::Object(first_ask))
            .await
        {
            eprintln!("logstream tail: {e}; reconnecting");
            continue;
        }
        let mut subscribed = false;
        loop {
            let event = tokio::select! {
                () = &mut stop => {
                    client.close().await;
                    return Ok(());
                }
                e = client.next() => e,
            };
            match event {
                Incoming::Event(name, args, attachments) => match name.as_str() {
                    "log:new" => {
                        let offset = args.get(1).and_then(Value::as_str);
                        if let Some(entry) = args.first() {
                            printer.print(entry, offset)?;
                        }
                        if let Some(o) = offset {
                            last_offset = Some(o.to_owned());
                        }
                    }
                    "log:batch" => {
                        match batch_entries(args.first(), &attachments) {
                            Ok(entries) => {
                                for entry in &entries {
                                    printer.print(entry, None)?;
                                }
                            }
                            Err(why) => eprintln!("logstream tail: {}", printable(&why)),
                        }
                        if let Some(Value::String(o)) = args.get(1) {
                            last_offset = Some(o.clone());
                        }
                    }
                    "log:subscribed" => {
                        subscribed = true;
                        // From now on a reconnection resumes from the last offset shown
                        // (until then, it asks for the same start again).
                        first = false;
                        backoff = BACKOFF_MIN;
                        let s = args.first().cloned().unwrap_or_default();
                        if on_terminal && !resumed {
                            eprintln!(
                                "logstream tail: connected to {}; following {}{}",
                                opts.server,
                                printable(&opts.describe()),
                                s["rateLimit"]
                                    .as_u64()
                                    .map(|r| format!(" (live: up to {r} logs/s)"))
                                    .unwrap_or_default()
                            );
                        }
                        if resumed && s["recovered"] == json!(false) {
                            eprintln!(
                                "logstream tail: reconnected, but the server no longer holds every log since the last one shown: some were missed"
                            );
                        } else if resumed {
                            eprintln!("logstream tail: reconnected; nothing missed");
                        }
                    }
                    "log:dropped" => {
                        let d = args.first().cloned().unwrap_or_default();
                        eprintln!(
                            "logstream tail: {} logs dropped: {}",
                            d["count"],
                            d["reason"].as_str().unwrap_or("?").replace('_', " ")
                        );
                    }
                    "error" => {
                        let e = args.first().cloned().unwrap_or_default();
                        let code = e["code"].as_str().unwrap_or("error");
                        let message = e["message"].as_str().unwrap_or("");
                        if !subscribed && asked_gzip && refuses_encoding(&e) {
                            // A server from before gzip batches (its default filter calls
                            // `encoding` an unknown param): ask as it understands.
                            asked_gzip = false;
                            if let Err(e) = client
                                .emit("log:subscribe", &Value::Object(plain.clone()))
                                .await
                            {
                                eprintln!("logstream tail: {e}; reconnecting");
                                break;
                            }
                            continue;
                        }
                        if !subscribed {
                            client.close().await;
                            return Err(TailError::Fatal(format!(
                                "subscription refused [{}]: {}",
                                printable(code),
                                printable(message)
                            )));
                        }
                        if matches!(code, "filter_removed" | "filter_disabled") && opts.fallback_all
                        {
                            eprintln!(
                                "logstream tail: {}; following every log the token may see (--fallback-all)",
                                printable(message)
                            );
                            base = Map::new();
                            base.insert("resume".into(), json!(true));
                            base.insert("rateLimit".into(), json!(ASK_RATE));
                            let all = if opts.output == Output::Json {
                                base.clone()
                            } else {
                                with_gzip(base.clone())
                            };
                            if let Err(e) = client.emit("log:subscribe", &Value::Object(all)).await
                            {
                                eprintln!("logstream tail: {e}; reconnecting");
                                break;
                            }
                            continue;
                        }
                        if matches!(code, "filter_removed" | "filter_disabled") {
                            // The subscription is over; following something else instead
                            // would print logs the user did not ask for (unless asked).
                            client.close().await;
                            return Err(TailError::Fatal(format!(
                                "[{}] {}",
                                printable(code),
                                printable(message)
                            )));
                        }
                        eprintln!(
                            "logstream tail: error [{}]: {}",
                            printable(code),
                            printable(message)
                        );
                    }
                    "auth:expired" => {
                        eprintln!(
                            "logstream tail: the token expires soon; the server will disconnect at its expiry"
                        );
                    }
                    _ => {}
                },
                Incoming::Closed(why) => {
                    eprintln!("logstream tail: disconnected ({why}); reconnecting");
                    break;
                }
            }
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Writes logs to stdout in the chosen form.
struct Printer {
    output: Output,
    color: bool,
    timestamps: bool,
    out: std::io::Stdout,
}

/// Colours for device names (picked by a hash of the name).
const DEVICE_COLORS: [&str; 6] = ["36", "35", "34", "32", "33", "96"];

impl Printer {
    fn new(opts: &TailOptions) -> Printer {
        Printer {
            output: opts.output,
            color: opts.color,
            timestamps: opts.timestamps,
            out: std::io::stdout(),
        }
    }

    /// Print one entry; `offset` (where known) goes into `--output json`'s line.
    fn print(&mut self, entry: &Value, offset: Option<&str>) -> Result<(), TailError> {
        let line = match (self.output, offset, entry) {
            (Output::Json, Some(offset), Value::Object(fields)) => {
                let mut with_offset = fields.clone();
                with_offset.insert("offset".into(), json!(offset));
                format_line(&Value::Object(with_offset), self.output, false, false)
            }
            _ => format_line(entry, self.output, self.color, self.timestamps),
        };
        let mut out = self.out.lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => Ok(()),
            // `| head`: the reader went away; end quietly.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            Err(e) => Err(TailError::Fatal(format!("writing to stdout: {e}"))),
        }
    }
}

/// Characters a log's text may not bring to a terminal as they are: controls (C0, DEL, C1
/// with NEL and the CSI byte 0x9B: escape sequences, carriage returns, a newline that would
/// forge another line), line and paragraph separators, and the bidirectional controls that
/// make text display in another order than it reads (U+202A–U+202E, U+2066–U+2069, the
/// marks U+200E, U+200F, U+061C). Tabs stay.
fn unsafe_for_terminals(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `text` safe for a terminal: what [`unsafe_for_terminals`] names is shown as a `\u{…}`
/// escape.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if unsafe_for_terminals(c) {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// JSON text safe for a terminal: the same characters as `\uXXXX` escapes (all of them are
/// in the Basic Multilingual Plane, and outside strings JSON has none of them), so a JSON
/// reader reads the same value.
fn json_printable(json: String) -> String {
    if !json.chars().any(unsafe_for_terminals) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if unsafe_for_terminals(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// One log as printed (no trailing newline).
pub fn format_line(entry: &Value, output: Output, color: bool, timestamps: bool) -> String {
    let text = |key: &str| printable(entry[key].as_str().unwrap_or(""));
    match output {
        Output::Json => json_printable(entry.to_string()),
        Output::Raw => text("message"),
        Output::Text => {
            let device = text("deviceId");
            let level = text("level");
            let message = text("message");
            let mut line = String::new();
            if timestamps {
                line.push_str(&text("timestamp"));
                line.push(' ');
            }
            if color {
                let hash = device
                    .bytes()
                    .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
                let device_color = DEVICE_COLORS[hash % DEVICE_COLORS.len()];
                let level_color = match level.as_str() {
                    "TRACE" => "90",
                    "DEBUG" => "34",
                    "INFO" => "32",
                    "WARN" => "33",
                    "ERROR" => "31",
                    "FATAL" => "1;31",
                    _ => "0",
                };
                line.push_str(&format!(
                    "\x1b[{device_color}m{device}\x1b[0m \x1b[{level_color}m{level:<5}\x1b[0m {message}"
                ));
            } else {
                line.push_str(&format!("{device} {level:<5} {message}"));
            }
            line
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> TailOptions {
        TailOptions {
            server: "http://localhost:3000".into(),
            token: "t".into(),
            devices: vec![],
            levels: vec![],
            tags: vec![],
            keywords: vec![],
            filter: None,
            params: None,
            transforms: vec![],
            tail: None,
            since: None,
            output: Output::Text,
            fallback_all: false,
            color: false,
            timestamps: false,
            ca_file: None,
        }
    }

    #[test]
    fn subscriptions_follow_the_flags() {
        let mut o = opts();
        o.devices = vec!["a".into(), "b".into()];
        o.levels = vec!["ERROR".into()];
        o.transforms = vec!["redact".into()];
        let sub = Value::Object(o.subscription().unwrap());
        assert_eq!(
            sub,
            json!({ "deviceIds": ["a", "b"], "levels": ["ERROR"], "transform": [{ "name": "redact" }], "resume": true, "rateLimit": ASK_RATE })
        );
        let mut o = opts();
        o.filter = Some("regex".into());
        o.params = Some(json!({ "pattern": "x" }));
        let sub = Value::Object(o.subscription().unwrap());
        assert_eq!(
            sub,
            json!({ "filter": "regex", "params": { "pattern": "x" }, "resume": true, "rateLimit": ASK_RATE })
        );
        o.devices = vec!["a".into()];
        assert!(o.subscription().is_err(), "-d with --filter is refused");
    }

    #[test]
    fn batches_are_read_plain_or_gzip_and_garbage_is_an_error() {
        use std::io::Write;
        let entries = json!([{ "message": "a" }, { "message": "b" }]);
        assert_eq!(
            batch_entries(Some(&entries), &[]).unwrap(),
            entries.as_array().unwrap().clone()
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(entries.to_string().as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let placeholder = json!({ "_placeholder": true, "num": 0 });
        assert_eq!(
            batch_entries(Some(&placeholder), &[gz]).unwrap(),
            entries.as_array().unwrap().clone()
        );
        assert!(batch_entries(Some(&placeholder), &[]).is_err());
        assert!(batch_entries(Some(&placeholder), &[b"not gzip".to_vec()]).is_err());
        assert!(batch_entries(Some(&json!({ "num": 0 })), &[vec![]]).is_err());
    }

    #[test]
    fn a_server_from_before_gzip_batches_is_recognised_by_its_refusal() {
        // As logstream 0.1 (before `encoding`) answers: its default filter names the param.
        let old = json!({ "code": "invalid_params", "message": "filter `default` rejected the params: encoding: unknown field; expected deviceIds, levels, tags or keywords" });
        assert!(refuses_encoding(&old));
        assert!(refuses_encoding(
            &json!({ "code": "invalid_subscription", "field": "encoding", "message": "x" })
        ));
        assert!(!refuses_encoding(
            &json!({ "code": "unknown_filter", "message": "no filter named `x`" })
        ));
    }

    #[test]
    fn control_characters_cannot_reach_the_terminal() {
        let e = json!({ "deviceId": "d\u{1b}]52;c;ZXZpbA==\u{7}", "level": "INFO", "message": "ok\nd2 ERROR forged\r" });
        let line = format_line(&e, Output::Text, false, false);
        assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        assert!(line.contains("\\u{a}"), "{line:?}");
        assert!(!format_line(&e, Output::Raw, false, false).contains('\n'));
    }

    #[test]
    fn del_c1_separators_and_bidi_controls_are_escaped_in_every_output() {
        let tricky = "a\u{7f}b\u{9b}31mc\u{85}d\u{202e}txt.exe\u{2028}e\u{2066}f";
        let e = json!({ "deviceId": "d", "level": "INFO", "message": tricky });
        for output in [Output::Text, Output::Raw, Output::Json] {
            let line = format_line(&e, output, false, false);
            assert!(
                !line.chars().any(unsafe_for_terminals),
                "{output:?}: {line:?}"
            );
        }
        let json = format_line(&e, Output::Json, false, false);
        assert!(
            json.contains("\\u202e") && json.contains("\\u007f"),
            "{json}"
        );
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["message"], tricky, "a JSON reader reads the same text");
        let text = format_line(&e, Output::Text, false, false);
        assert!(
            text.contains("\\u{202e}") && text.contains("\\u{9b}"),
            "{text}"
        );
    }

    #[test]
    fn lines_are_formatted_as_asked() {
        let e = json!({ "deviceId": "d1", "level": "WARN", "message": "hot", "timestamp": "2025-01-01T00:00:00Z" });
        assert_eq!(format_line(&e, Output::Text, false, false), "d1 WARN  hot");
        assert_eq!(
            format_line(&e, Output::Text, false, true),
            "2025-01-01T00:00:00Z d1 WARN  hot"
        );
        assert_eq!(format_line(&e, Output::Raw, false, false), "hot");
        assert_eq!(format_line(&e, Output::Json, false, false), e.to_string());
        let colored = format_line(&e, Output::Text, true, false);
        assert!(colored.contains("\x1b[33mWARN"), "{colored:?}");
    }
}
