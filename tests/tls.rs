//! TLS on the server's port (HTTPS and WSS) and in the command-line tools, with a CA made in
//! the test: the tools with `--ca-file`, the Python client (`requests`, python-socketio),
//! refusals that say what failed (an unknown CA, another name) with their own exit code, a
//! pair that does not load stopping the start, and a renewed certificate served after SIGHUP
//! while an open WebSocket stays up. (The official JS client: tests/js/tls.test.js.)

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::tls::{Pki, serial_of, served_serial};
use common::{API_KEY, Server, eventually};

const T: Duration = Duration::from_secs(15);

fn tls_server(pki: &Pki, cert: &std::path::Path, key: &std::path::Path) -> Server {
    Server::builder()
        .set("tls_cert", cert.display())
        .set("tls_key", key.display())
        .trust_ca(&pki.ca)
        .capture_stderr()
        .start()
}

/// The server's `https://localhost:port`.
fn https(server: &Server) -> (String, u16) {
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(server.url.starts_with("https://"), "{}", server.url);
    (format!("https://localhost:{port}"), port)
}

fn logstream(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_logstream"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("LOGSTREAM_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn a_pair_that_does_not_load_stops_the_start_naming_the_file() {
    let pki = Pki::new("tls-bad-pair");
    let (cert, _) = pki.server_cert("a", &["localhost"]);
    let (_, other_key) = pki.server_cert("b", &["localhost"]);
    let cases = [
        (
            cert.clone(),
            other_key.clone(),
            "does not match the first certificate",
        ),
        (pki.dir.join("missing.pem"), other_key.clone(), "tls_cert"),
        (cert.clone(), pki.dir.join("missing.key"), "tls_key"),
    ];
    for (cert, key, said) in cases {
        let out = logstream(&["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(["--set", &format!("tls_cert={}", cert.display())])
            .args(["--set", &format!("tls_key={}", key.display())])
            .env("LOGSTREAM_JWT_SECRET", common::SECRET)
            .env("LOGSTREAM_DATA_DIR", "")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {cert:?} {key:?}");
        assert!(stderr.contains(said), "{said}: {stderr}");
        let named = cert.display().to_string();
        let key_named = key.display().to_string();
        assert!(
            stderr.contains(&named) || stderr.contains(&key_named),
            "{stderr}"
        );
    }
    let half = logstream(&["serve", "--port", "0", "--set"])
        .arg(format!("tls_cert={}", cert.display()))
        .env("LOGSTREAM_JWT_SECRET", common::SECRET)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&half.stderr).contains("go together"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_ship_over_tls_with_a_private_ca_and_clear_refusals() {
    let pki = Pki::new("tls-tools");
    let (cert, key) = pki.server_cert("server", &["localhost", "127.0.0.1"]);
    let server = tls_server(&pki, &cert, &key);
    let (url, _) = https(&server);
    let ca = pki.ca.display().to_string();

    // tail follows over WSS.
    // (`-n`: what was shipped before it subscribed comes from history.)
    let mut tail = logstream(&["tail", "--server", &url, "--ca-file", &ca, "-d", "d"])
        .args(["--output", "raw", "-n", "10"])
        .env("LOGSTREAM_TOKEN", Server::token("tls-tail"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // ship posts over HTTPS.
    let shipped = tokio::task::spawn_blocking({
        let (url, ca) = (url.clone(), ca.clone());
        move || {
            logstream(&["ship", "--server", &url, "--ca-file", &ca])
                .args(["--device", "d", "-"])
                .env("LOGSTREAM_API_KEY", API_KEY)
                .output_with_input(b"first line over tls\n")
        }
    });
    let shipped = shipped.await.unwrap();
    assert!(shipped.status.success(), "{shipped:?}");
    let stdout = tail.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().next()
    });
    let line = tokio::time::timeout(T, line).await.unwrap().unwrap();
    assert_eq!(line.unwrap().unwrap(), "first line over tls");
    let _ = tail.kill();
    let _ = tail.wait();

    // Refusals: an unknown CA, another name; each with exit code 3 and what failed.
    let other_ca = pki.other_ca.display().to_string();
    let refused = logstream(&["tail", "--server", &url, "--ca-file", &other_ca])
        .env("LOGSTREAM_TOKEN", Server::token("x"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("not signed by a CA this tool trusts"),
        "{refused:?}"
    );
    let refused = logstream(&["ship", "--server", &url, "--device", "d", "-"])
        .env("LOGSTREAM_API_KEY", API_KEY)
        .output_with_input(b"x\n");
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--ca-file"),
        "the public roots do not know the test CA: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused_saying_so() {
    let pki = Pki::new("tls-name");
    let (cert, key) = pki.server_cert("elsewhere", &["logs.elsewhere.test"]);
    let server = tls_server(&pki, &cert, &key);
    let (url, _) = https(&server);
    let out = logstream(&["tail", "--server", &url, "--ca-file"])
        .arg(&pki.ca)
        .env("LOGSTREAM_TOKEN", Server::token("x"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("logs.elsewhere.test") && stderr.contains("localhost"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_clients_speak_tls_with_a_private_ca() {
    let pki = Pki::new("tls-python");
    let (cert, key) = pki.server_cert("server", &["localhost", "127.0.0.1"]);
    let server = tls_server(&pki, &cert, &key);
    let (url, _) = https(&server);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/tls_client.py");
    let token = Server::token("py-tls");
    let ca = pki.ca.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(&url)
            .arg(&ca)
            .arg(&token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for said in [
        "ok requests",
        "ok unknown CA refused",
        "ok socket.io over websocket",
        "ok socket.io over polling",
    ] {
        assert!(stdout.contains(said), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_sighup_while_a_websocket_stays_up() {
    let pki = Pki::new("tls-renew");
    let (cert, key) = pki.server_cert("server", &["localhost", "127.0.0.1"]);
    let server = tls_server(&pki, &cert, &key);
    let (url, port) = https(&server);
    let first = serial_of(&cert);
    assert_eq!(served_serial(port, "localhost"), first);
    // A WebSocket opened before the renewal.
    // (`-n`: a log posted before it subscribed comes from history.)
    let mut tail = logstream(&[
        "tail", "--server", &url, "-d", "d", "--output", "raw", "-n", "5",
    ])
    .arg("--ca-file")
    .arg(&pki.ca)
    .env("LOGSTREAM_TOKEN", Server::token("renew"))
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    server
        .ingest(serde_json::json!([common::log("d", "INFO", "before")]))
        .await;
    assert_eq!(rx.recv_timeout(T).unwrap(), "before");
    // Renew in place, then SIGHUP.
    let (renewed, renewed_key) = pki.server_cert("renewed", &["localhost", "127.0.0.1"]);
    std::fs::copy(&renewed, &cert).unwrap();
    std::fs::copy(&renewed_key, &key).unwrap();
    server.signal("-HUP");
    let second = serial_of(&renewed);
    assert_ne!(first, second);
    eventually(T, "the renewed certificate is served", || async {
        let served = tokio::task::spawn_blocking(move || served_serial(port, "localhost"))
            .await
            .unwrap();
        if served == second {
            Ok(())
        } else {
            Err(served)
        }
    })
    .await;
    server
        .ingest(serde_json::json!([common::log("d", "INFO", "after")]))
        .await;
    assert_eq!(
        rx.recv_timeout(T).unwrap(),
        "after",
        "the open WebSocket stayed up"
    );
    let _ = tail.kill();
    let _ = tail.wait();
}

/// `Command::output` with `input` written to its stdin first.
trait OutputWithInput {
    fn output_with_input(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithInput for Command {
    fn output_with_input(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}
