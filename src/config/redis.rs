//! Redis: the cluster's bus, history, sessions and admin channel.

use super::group::{Check, at_most, between, config_group, non_empty};

config_group! {
    /// Several instances through Redis.
    pub struct RedisConfig {
        /// Redis URL (`redis://`, `rediss://`, `unix://`, `redis+sentinel://s1:p1,s2:p2/name`,
        /// `redis+cluster://h1:p1,h2:p2`); unset = embedded in-process bus.
        redis_url: Option<String> = None, redis_scheme;
        /// Channel carrying log entries (a JSON object or array), as the seed publishes them.
        redis_log_channel: String = "log:new".into(), non_empty;
        /// Channel carrying `{ deviceId, status }`.
        redis_status_channel: String = "device:status".into(), non_empty;
        /// Channel for cluster-wide admin operations between logstream instances.
        redis_admin_channel: String = "logstream:admin".into(), non_empty;
        /// Redis Stream holding every accepted log (the cluster's history and durable bus).
        redis_stream: String = "logstream:logs".into(), non_empty;
        /// Streams the logs are spread over by device (`hash(deviceId) mod N`); each instance
        /// reads only the shards its clients can match. 1 = the one stream `redis_stream`.
        /// Every instance of a cluster must use the same number (a different one is refused).
        redis_stream_shards: usize = 1, between(1, 64, " (shards)");
        /// Replicas that must confirm each append (`WAIT`) before ingest answers 202, so an
        /// accepted log survives the primary's failover; 0 = the primary's answer is enough.
        redis_min_replicas: usize = 0, at_most(16);
        /// How long an append waits for `redis_min_replicas` confirmations before ingest
        /// answers 503.
        redis_min_replicas_timeout_ms: u64 = 1000, between(1, 60_000, "");
        /// This instance's name in cluster views; empty = generated at start.
        instance_id: String = String::new();
    }
}

fn redis_scheme(url: &Option<String>) -> Check {
    match url {
        Some(url) => Target::parse(url).map(|_| ()),
        None => Ok(()),
    }
}

/// A `redis_url`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server: the URL as the `redis` crate reads it.
    Single(String),
    /// Sentinels (`redis://host:port` each), the monitored master's name, and the
    /// credentials of the data nodes.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        username: Option<String>,
        password: Option<String>,
    },
    /// Cluster nodes to start from (`redis://[:password@]host:port` each).
    Cluster(Vec<String>),
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, rest) = url.split_once("://").ok_or(
            "must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://",
        )?;
        match scheme {
            "redis" | "rediss" | "unix" => Ok(Target::Single(url.to_owned())),
            "redis+sentinel" | "redis+cluster" => {
                let (auth, rest) = match rest.rsplit_once('@') {
                    Some((auth, rest)) => (Some(auth), rest),
                    None => (None, rest),
                };
                // `user:password`, percent-encoded as in any URL.
                let (username, password) = match auth {
                    Some(a) => {
                        let (u, p) = a.split_once(':').unwrap_or(("", a));
                        (decoded(u)?, decoded(p)?)
                    }
                    None => (None, None),
                };
                let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
                let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
                if hosts.iter().any(|h| !valid_host_port(h)) || hosts.is_empty() {
                    return Err(format!(
                        "{scheme}:// needs a comma-separated list of host:port"
                    ));
                }
                if scheme == "redis+sentinel" {
                    let master = path.trim_matches('/');
                    if master.is_empty() || master.contains('/') {
                        return Err(
                            "redis+sentinel:// needs the master's name after the hosts: redis+sentinel://s1:26379,s2:26379/mymaster".into(),
                        );
                    }
                    Ok(Target::Sentinel {
                        sentinels: hosts.iter().map(|h| format!("redis://{h}")).collect(),
                        master: master.to_owned(),
                        username,
                        password,
                    })
                } else {
                    if !path.is_empty() {
                        return Err(
                            "redis+cluster:// takes no path (a cluster has one database)".into()
                        );
                    }
                    // As given (still encoded): each node's URL is read like any other.
                    let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
                    Ok(Target::Cluster(
                        hosts.iter().map(|h| format!("redis://{auth}{h}")).collect(),
                    ))
                }
            }
            _ => Err("must start with redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://".into()),
        }
    }
}

/// A percent-encoded part of a URL, decoded; `None` if empty.
fn decoded(part: &str) -> Result<Option<String>, String> {
    if part.is_empty() {
        return Ok(None);
    }
    percent_encoding::percent_decode_str(part)
        .decode_utf8()
        .map(|s| Some(s.into_owned()))
        .map_err(|_| "its user or password is not valid percent-encoded UTF-8".to_owned())
}

fn valid_host_port(h: &str) -> bool {
    h.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_the_three_deployments() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379/0"),
            Ok(Target::Single("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(
            Target::parse("redis+sentinel://:pw@s1:26379, s2:26380/mymaster"),
            Ok(Target::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26380".into()],
                master: "mymaster".into(),
                username: None,
                password: Some("pw".into()),
            })
        );
        assert_eq!(
            Target::parse("redis+sentinel://app:p%40ss%2Fw@s1:26379/m"),
            Ok(Target::Sentinel {
                sentinels: vec!["redis://s1:26379".into()],
                master: "m".into(),
                username: Some("app".into()),
                password: Some("p@ss/w".into()),
            })
        );
        assert_eq!(
            Target::parse("redis+cluster://h1:7000,h2:7001"),
            Ok(Target::Cluster(vec![
                "redis://h1:7000".into(),
                "redis://h2:7001".into()
            ]))
        );
        assert_eq!(
            Target::parse("redis+cluster://:p%2Fw@h1:7000"),
            Ok(Target::Cluster(vec!["redis://:p%2Fw@h1:7000".into()]))
        );
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1/mymaster",
            "redis+sentinel://s1:26379/a/b",
            "redis+cluster://h1:7000/0",
            "redis+cluster://h1:x",
            "redis+cluster://",
            "http://h:1",
            "h:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
