//! Runs the suite driven by the official JS `socket.io-client` (`tests/js/`) against the
//! binary cargo just built. Needs Node.js; installs the npm packages on first use.

#[path = "common/node.rs"]
mod node;

#[test]
fn official_socket_io_client_suite() {
    let dir = node::suite_dir("js", "socket.io-client");
    let report = node::run_suite(&dir, &[]);
    assert!(report.contains("pass"), "JS-client suite ran no test");
}
