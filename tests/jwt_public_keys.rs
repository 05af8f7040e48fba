//! RS256 / ES256 client tokens verified with `jwt_public_key`, end to end through the
//! handshake, plus the classic algorithm-confusion forgery (an HS256 token whose "secret" is
//! the public key) that must fail.

mod common;

use std::time::Duration;

use common::{Server, TestClient};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn sign(alg: Algorithm, key: &EncodingKey) -> String {
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    jsonwebtoken::encode(
        &Header::new(alg),
        &json!({ "sub": "pk-user", "exp": exp }),
        key,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_tokens_verify_and_confusion_forgeries_do_not() {
    for (alg, private, public) in [
        (Algorithm::ES256, "ec-private.pem", "ec-public.pem"),
        (Algorithm::RS256, "rsa-private.pem", "rsa-public.pem"),
    ] {
        let server = Server::builder()
            .env("LOGSTREAM_JWT_PUBLIC_KEY", fixture(public))
            .start();
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let mut c = TestClient::connect(&server.url, Some(&sign(alg, &key)))
            .await
            .unwrap_or_else(|e| panic!("{alg:?} token refused: {}", e.0));
        c.subscribe(json!({})).await;

        // alg confusion: HS256 "signed" with the public key's bytes.
        let public_pem = std::fs::read(fixture(public)).unwrap();
        let forged = sign(Algorithm::HS256, &EncodingKey::from_secret(&public_pem));
        let err = TestClient::connect(&server.url, Some(&forged))
            .await
            .err()
            .expect("forgery refused");
        assert!(err.0.contains("Authentication failed"), "{}", err.0);
        // The HS256 test secret is configured too, and still works alongside.
        let _hs = TestClient::connect(&server.url, Some(&Server::token("hs-user")))
            .await
            .expect("HS256 still accepted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn a_bad_public_key_file_stops_the_server_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_logstream"))
        .args(["serve", "--port", "0", "--host", "127.0.0.1"])
        .env("LOGSTREAM_JWT_PUBLIC_KEY", fixture("README.md"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jwt_public_key") && stderr.contains("PEM"),
        "{stderr}"
    );
}
