//! The Python Socket.IO client (python-socketio, from PyPI) against the real server: history
//! (`since`, `tail`, offsets) over long-polling and WebSocket. `.ci/run` installs the client.

mod common;

use std::process::Command;

use common::{API_KEY, Server};

#[test]
fn python_client_since_and_tail_over_polling_and_websocket() {
    let server = Server::builder().set("rate_limit", 100_000).start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/history_client.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .args([&server.url, &Server::token("py"), API_KEY])
        .output()
        .expect("python3 is needed for the Python-client test");
    let report = String::from_utf8_lossy(&output.stdout);
    println!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "Python client failed (pip install 'python-socketio[client]'):\n{report}"
    );
    assert!(report.contains("2 passed, 0 failed"), "{report}");
}

#[test]
fn python_client_decodes_gzip_batches() {
    let server = Server::builder().set("rate_limit", 100_000).start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/gzip_client.py");
    let output = Command::new("python3")
        .arg(script)
        .args([&server.url, &Server::token("py-gz"), API_KEY])
        .output()
        .expect("python3 is needed for the Python-client test");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && report.contains("ok gzip batch"),
        "{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
